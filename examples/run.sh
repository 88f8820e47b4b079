#!/usr/bin/env bash
# Runs a ward server, the payments service (HTTP with axum, or gRPC with
# tonic) and the checkout client on loopback, then cleans up.
#
#   ./examples/run.sh http
#   ./examples/run.sh grpc
#
#   ./examples/run.sh --bin-dir    # where the binaries are taken from
#
# Binaries are built in release into cargo's target dir (CARGO_TARGET_DIR
# or the build.target-dir setting are honoured), or taken from
# $WARD_BIN_DIR as they are. The server listens on $WARD_LISTEN (default:
# a port the OS picks). On failure the logs are kept and their path shown.
set -euo pipefail
kind=${1:-http}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
case $kind in
  http | grpc) ;;
  --bin-dir) echo "${WARD_BIN_DIR:-$(target_dir)/release}"; exit 0 ;;
  *) echo "usage: $0 http|grpc|--bin-dir" >&2; exit 2 ;;
esac
if [ -z "${WARD_BIN_DIR:-}" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p ward-cli -p ward-examples
  WARD_BIN_DIR=$(target_dir)/release
fi
bin=$WARD_BIN_DIR
work=$(mktemp -d)
pids=()
cleanup() {
  status=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    rm -rf "$work"
  else
    echo "failed; the logs are kept in $work:" >&2
    for log in "$work"/*.log; do
      [ -s "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  exit "$status"
}
trap cleanup EXIT
export RUST_LOG=${RUST_LOG:-warn}

# 1. The control plane, with its own CA and OAuth2 server.
export WARD_DATA_DIR=$work/ward
"$bin/ward" server --data-dir "$WARD_DATA_DIR" --listen "${WARD_LISTEN:-127.0.0.1:0}" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
pids+=($server_pid)
for _ in $(seq 200); do
  [ -s "$WARD_DATA_DIR/server.json" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
json_field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$2"; }
[ -s "$WARD_DATA_DIR/server.json" ] || { echo "ward server did not start" >&2; exit 1; }
url=$(json_field url "$WARD_DATA_DIR/server.json")
td=$(json_field trust_domain "$WARD_DATA_DIR/server.json")
echo "ward server at $url (trust domain $td)"

# 2. Services, certificates, and an OAuth2 client that authenticates with
#    its certificate (tls_client_auth) and may ask for payments:read.
for svc in payments checkout intruder; do
  "$bin/ward" service add "$svc" >/dev/null
  mkdir -p "$work/$svc"
  "$bin/ward" cert issue --spiffe-id "spiffe://$td/ns/default/sa/$svc" \
    --out-cert "$work/$svc/svid.pem" --out-key "$work/$svc/svid.key" \
    --out-bundle "$work/$svc/bundle.pem" >/dev/null
done
"$bin/ward" client create checkout --service checkout --auth tls_client_auth \
  --audience payments --scope payments:read >/dev/null
echo "registered payments, checkout and intruder; OAuth2 client checkout (tls_client_auth)"

# 3. The payments service.
"$bin/payments-$kind" --dir "$work/payments" --ward "$url" >"$work/payments.out" 2>"$work/payments.log" &
pids+=($!)
addr=
for _ in $(seq 200); do
  addr=$(sed -n 's/^listening on //p' "$work/payments.out")
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "payments-$kind did not start" >&2; exit 1; }
echo "payments ($kind) on $addr"

# 4. The client: token from ward, then calls over mTLS.
if [ "$kind" = http ]; then target=(--http "https://$addr"); else target=(--grpc "$addr"); fi
"$bin/checkout" --dir "$work/checkout" --other-dir "$work/intruder" --ward "$url" \
  --server-id "spiffe://$td/ns/default/sa/payments" "${target[@]}"
echo "ok"
