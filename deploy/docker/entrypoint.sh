#!/bin/bash
# Container entry point: runs specmoe-server with flags taken from environment variables.
# Every variable SPECMOE_<NAME> with a non-empty value becomes the flag --<name> (lower
# case, '_' -> '-'): SPECMOE_MAX_BATCH=8 gives --max-batch 8. Arguments given to the
# container come after them. Image defaults (the Dockerfiles' ENV, deploy/README.md):
#   SPECMOE_TARGET=/models/target   SPECMOE_DRAFT=/models/draft
#   SPECMOE_LISTEN=0.0.0.0:50051    (every interface: inside a container the loopback is useless)
#   SPECMOE_METRICS_LISTEN=0.0.0.0:9090 (passed only when this server has --metrics-listen)
# Any other variable is passed as given, so a misspelt name stops start-up with the
# server's "unknown flag" error. Set a variable to "" to leave its flag out
# (SPECMOE_DRAFT= serves the target alone).
set -euo pipefail
server=/opt/specmoe/bin/specmoe-server

if [ -n "${SPECMOE_METRICS_LISTEN:-}" ] && ! "$server" --help | grep -q -- '--metrics-listen'; then
  unset SPECMOE_METRICS_LISTEN
fi

flags=()
for name in $(compgen -e | grep '^SPECMOE_[A-Z0-9_]*$' | sort); do
  value=${!name}
  [ -n "$value" ] || continue
  flag=${name#SPECMOE_}
  flag=${flag,,}
  flags+=("--${flag//_/-}" "$value")
done
exec "$server" "${flags[@]}" "$@"
