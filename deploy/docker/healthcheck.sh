#!/bin/sh
# The image's HEALTHCHECK: grpc.health.v1 through specmoe-cli health on the port of
# SPECMOE_LISTEN; prints SERVING and exits 0 only when the server serves.
# With TLS (SPECMOE_TLS_CERT set) it connects to localhost, trusting HEALTHCHECK_TLS_CA
# (default: SPECMOE_TLS_CERT itself, right for a self-signed certificate); the certificate
# must then name localhost.
set -eu
port=${SPECMOE_LISTEN##*:}
if [ -n "${SPECMOE_TLS_CERT:-}" ]; then
  exec /opt/specmoe/bin/specmoe-cli health --server "localhost:$port" --timeout-ms 3000 \
      --tls-ca "${HEALTHCHECK_TLS_CA:-$SPECMOE_TLS_CERT}"
fi
exec /opt/specmoe/bin/specmoe-cli health --server "127.0.0.1:$port" --timeout-ms 3000
