#!/usr/bin/env bash
# Runs a ward server, the payments service (HTTP with axum, or gRPC with
# tonic) and the checkout client on loopback, then cleans up.
#
#   ./examples/run.sh http
#   ./examples/run.sh grpc
#
# Binaries come from target/release (built first), or from $WARD_BIN_DIR.
set -euo pipefail
kind=${1:-http}
case $kind in
  http | grpc) ;;
  *) echo "usage: $0 http|grpc" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${WARD_BIN_DIR:-}" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p ward-cli -p ward-examples
  WARD_BIN_DIR=$root/target/release
fi
bin=$WARD_BIN_DIR
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export RUST_LOG=${RUST_LOG:-warn}

# 1. The control plane, with its own CA and OAuth2 server.
export WARD_DATA_DIR=$work/ward
"$bin/ward" server --data-dir "$WARD_DATA_DIR" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 200); do
  [ -s "$WARD_DATA_DIR/server.json" ] && break
  sleep 0.05
done
json_field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$2"; }
url=$(json_field url "$WARD_DATA_DIR/server.json")
td=$(json_field trust_domain "$WARD_DATA_DIR/server.json")
[ -n "$url" ] || { echo "ward server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
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
[ -n "$addr" ] || { echo "payments-$kind did not start:" >&2; cat "$work/payments.log" >&2; exit 1; }
echo "payments ($kind) on $addr"

# 4. The client: token from ward, then calls over mTLS.
if [ "$kind" = http ]; then target=(--http "https://$addr"); else target=(--grpc "$addr"); fi
"$bin/checkout" --dir "$work/checkout" --other-dir "$work/intruder" --ward "$url" \
  --server-id "spiffe://$td/ns/default/sa/payments" "${target[@]}"
echo "ok"
