#!/bin/sh
# Prometheus reads no environment variables in its configuration, so the scrape's bearer token
# (METRICS_TOKEN) reaches it as a file: the Docker secret when one is mounted, else the variable.
# The file lives in the container's /tmp, not in the data volume.
set -eu
umask 077
token_file=${METRICS_TOKEN_PATH:-/tmp/metrics_token}
secret=${METRICS_TOKEN_SECRET:-/run/secrets/metrics_token}
if [ -r "$secret" ]; then
    cat "$secret" > "$token_file"
else
    printf '%s' "${METRICS_TOKEN:-}" > "$token_file"
fi
exec "${PROMETHEUS:-/bin/prometheus}" --config.file=/etc/prometheus/prometheus.yml \
    --storage.tsdb.path=/prometheus "$@"
