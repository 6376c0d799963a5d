#!/usr/bin/env bash
# Starts a Tessera server and agent on this machine (embedded SQLite, files under
# $TESSERA_QUICKSTART_DIR, default /tmp/tessera-quickstart), enrolls the node with a join
# token, and registers the current user, so that
#   target/debug/tessera-agent api fetch x509
# (or any SPIFFE client with SPIFFE_ENDPOINT_SOCKET) returns an X.509-SVID.
# The server's node API takes port 8081, or the next free one up to 8099 when it is busy.
# `deploy/quickstart.sh stop` stops both. Extra `tessera-server run` flags can be given in
# $TESSERA_SERVER_ARGS (e.g. "--policy-dir $PWD/deploy/examples/agentic/policies").
# $TESSERA_QUICKSTART_BIN names a directory of already built binaries (no build then).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TESSERA_QUICKSTART_DIR:-/tmp/tessera-quickstart}
td=example.org
node_id=spiffe://$td/node/quickstart
bin=${TESSERA_QUICKSTART_BIN:-target/debug}
admin=(--admin-socket "$dir/admin.sock")

stop() {
  for p in agent server; do
    if [ -f "$dir/$p.pid" ]; then
      kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
}
if [ "${1:-}" = stop ]; then stop; echo "stopped"; exit 0; fi
stop

if [ -z "${TESSERA_QUICKSTART_BIN:-}" ]; then
  echo "Building tessera-server and tessera-agent (the first build takes several minutes)..."
  cargo build --locked --bins
fi
bin=$(cd "$bin" && pwd)
mkdir -p "$dir/public"
chmod 755 "$dir" "$dir/public"

# Starts the server on port $1; succeeds once it answers on its admin socket, fails (1) if
# it exits, and says so (2) when it exited because the port is taken.
start_server() {
  "$bin/tessera-server" run --trust-domain "$td" --data-dir "$dir/server" \
    --bind "127.0.0.1:$1" "${admin[@]}" "${extra[@]}" >"$dir/server.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/server.pid"
  for _ in $(seq 100); do
    "$bin/tessera-server" healthcheck "${admin[@]}" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$dir/server.pid"
      grep -q "in use" "$dir/server.log" && return 2
      return 1
    fi
    sleep 0.1
  done
  "$bin/tessera-server" healthcheck "${admin[@]}" >/dev/null
}

read -r -a extra <<<"${TESSERA_SERVER_ARGS:-}"
port=8081
while :; do
  status=0
  start_server "$port" || status=$?
  [ "$status" = 0 ] && break
  if [ "$status" = 2 ] && [ "$port" -lt 8099 ]; then
    echo "Port $port is busy; trying $((port + 1))."
    port=$((port + 1))
    continue
  fi
  cat "$dir/server.log"
  exit 1
done
echo "Server listening on 127.0.0.1:$port."

"$bin/tessera-server" bundle show "${admin[@]}" >"$dir/bundle.pem"
user_id=spiffe://$td/user/$(id -un | tr -c 'a-zA-Z0-9._\n-' '_')
if ! "$bin/tessera-server" entry show --spiffe-id "$user_id" "${admin[@]}" | grep -q "Entry ID"; then
  "$bin/tessera-server" entry create "${admin[@]}" --parent-id "$node_id" \
    --spiffe-id "$user_id" --selector "unix:uid:$(id -u)" >/dev/null
fi

token_args=()
if [ ! -f "$dir/agent/agent_svid.key" ]; then
  token=$("$bin/tessera-server" token generate --spiffe-id "$node_id" "${admin[@]}")
  token_args=(--join-token "$token")
fi
"$bin/tessera-agent" run --trust-domain "$td" --server-address "127.0.0.1:$port" \
  --trust-bundle "$dir/bundle.pem" --data-dir "$dir/agent" \
  --socket-path "$dir/public/api.sock" "${token_args[@]}" >"$dir/agent.log" 2>&1 &
echo $! >"$dir/agent.pid"
for _ in $(seq 100); do [ -S "$dir/public/api.sock" ] && break; sleep 0.1; done

cat <<MSG
Tessera is running: server on 127.0.0.1:$port, logs in $dir.
Registered $user_id for uid $(id -u).
The binaries are in $bin. In your shell:
  export PATH="$bin:\$PATH"
  export TESSERA_ADMIN_SOCKET=$dir/admin.sock
  export SPIFFE_ENDPOINT_SOCKET=unix://$dir/public/api.sock
Then:
  tessera-agent api fetch x509      # your SVID
  tessera-server entry show         # the registration entries
Stop: deploy/quickstart.sh stop
MSG
