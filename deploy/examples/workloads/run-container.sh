#!/bin/sh
# Starts a container with the agent's Workload API socket mounted, gives it an identity by
# its container id, and fetches its X.509-SVID from inside it (see README.md).
# Usage: run-container.sh PARENT_ID SPIFFE_ID [IMAGE]
set -eu
parent=${1:?usage: run-container.sh PARENT_ID SPIFFE_ID [IMAGE]}
spiffe_id=${2:?usage: run-container.sh PARENT_ID SPIFFE_ID [IMAGE]}
image=${3:-debian:bookworm-slim}
socket_dir=/run/tessera-agent/public

id=$(docker run -d --rm -v "$socket_dir:$socket_dir:ro" \
    -e SPIFFE_ENDPOINT_SOCKET="unix://$socket_dir/api.sock" \
    "$image" sleep infinity)
echo "container $id"
docker cp "$(command -v tessera-agent)" "$id:/usr/local/bin/tessera-agent"

entry=$(tessera-server entry create --parent-id "$parent" --spiffe-id "$spiffe_id" \
    --selector "container:id:$id" --selector container:runtime:docker --output json |
    sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "entry $entry"

# The agent learns of the entry and signs its SVID within a moment; the CLI retries while
# the identity is not yet available.
docker exec "$id" tessera-agent api fetch x509
echo "remove with: docker rm -f $id && tessera-server entry delete --entry-id $entry"
