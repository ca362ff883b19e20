#!/bin/sh
# The image's HEALTHCHECK: grpc.health.v1 through specmoe-cli health on the port of
# SPECMOE_LISTEN; prints SERVING and exits 0 only when the server serves.
# With TLS (SPECMOE_TLS_CERT set) it connects to localhost, trusting HEALTHCHECK_TLS_CA
# (default: SPECMOE_TLS_CERT itself, right for a self-signed certificate); the certificate
# must then name localhost.
set -eu
port=${SPECMOE_LISTEN##*:}
# With mutual TLS (SPECMOE_TLS_CLIENT_CA set) it presents HEALTHCHECK_TLS_CERT/KEY (default:
# the server's own certificate and key, which the client CA must then have signed).
if [ -n "${SPECMOE_TLS_CLIENT_CA:-}" ]; then
  exec /opt/specmoe/bin/specmoe-cli health --server "localhost:$port" --timeout-ms 3000 \
      --tls-ca "${HEALTHCHECK_TLS_CA:-$SPECMOE_TLS_CERT}" \
      --tls-cert "${HEALTHCHECK_TLS_CERT:-$SPECMOE_TLS_CERT}" \
      --tls-key "${HEALTHCHECK_TLS_KEY:-$SPECMOE_TLS_KEY}"
fi
if [ -n "${SPECMOE_TLS_CERT:-}" ]; then
  exec /opt/specmoe/bin/specmoe-cli health --server "localhost:$port" --timeout-ms 3000 \
      --tls-ca "${HEALTHCHECK_TLS_CA:-$SPECMOE_TLS_CERT}"
fi
exec /opt/specmoe/bin/specmoe-cli health --server "127.0.0.1:$port" --timeout-ms 3000
