#!/usr/bin/env bash
# TLS against plain TCP on the same echod process: one server listens on
# both, and every cell alternates the two inside each round (noise here is
# ±15-30 %: compare alternating runs, quote medians). Then handshakes per
# second: `bench --reconnect` (connect, handshake, one echo, close) with
# HANDSHAKE_CONNECTIONS clients: plain TCP connects, full TLS handshakes, and
# TLS with session resumption (--tls-resume).
#
#   scripts/tls-compare.sh
#   ROUNDS=5 CELLS="50:64:1 500:64:1" SERVER_FLAGS="--workers 1" scripts/tls-compare.sh
#
# A throwaway CA and certificate are made with openssl in $OUT.
# Settings (environment): ROUNDS (default 3), DURATION (2), WARMUP (0.5),
# CELLS (CONNECTIONS:SIZE:PIPELINE list), HANDSHAKE_CONNECTIONS (500),
# SERVER_FLAGS, OUT (default target/tls-compare).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
CELLS=${CELLS:-"1:64:1 50:64:1 50:64:16 500:64:1 500:4096:16 1:65536:4"}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-500}
SERVER_FLAGS=${SERVER_FLAGS:-}
OUT=${OUT:-target/tls-compare}
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"

cargo build --release --quiet --bins --examples
bin=target/release

# A test CA and a server certificate for 127.0.0.1 (ECDSA P-256).
(
  cd "$OUT"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem \
    -out ca.pem -days 2 -subj "/CN=echod bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
    -out server.csr -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
    -extfile server.ext -out cert.pem 2>/dev/null
)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp_port=$(free_port)
tls_port=$(free_port)
# shellcheck disable=SC2086
"$bin/echo-server" --listen "127.0.0.1:$tcp_port" --listen "tls:127.0.0.1:$tls_port" \
  --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" --log-level warn \
  --max-connections 20000 $SERVER_FLAGS 2>"$OUT/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null; then break; fi
  sleep 0.1
done

target() { # tcp|tls
  if [ "$1" = tls ]; then
    echo "tls:127.0.0.1:$tls_port --tls-ca $OUT/ca.pem"
  else
    echo "127.0.0.1:$tcp_port"
  fi
}

echo "tcp vs tls on one echod; $ROUNDS round(s) of ${DURATION}s (+${WARMUP}s warm-up) per cell" >&2
for round in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    IFS=: read -r connections size pipeline <<< "$cell"
    for name in tcp tls; do
      # shellcheck disable=SC2046
      report=$("$bin/echo-client" bench $(target $name) --connections "$connections" --size "$size" \
        --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" --json) || true
      [ -n "$report" ] || report='{"messages":0,"msgs_per_sec":0,"errors":-1}'
      printf '{"round":%s,"server":"%s","connections":%s,"size":%s,"pipeline":%s,"report":%s}\n' \
        "$round" "$name" "$connections" "$size" "$pipeline" "$report" >> "$results"
      echo "round $round  $cell  $name: $(echo "$report" | grep -o '"msgs_per_sec":[0-9.]*')" >&2
    done
  done
done
cargo run --release --quiet --example bench_report -- "$results" --baseline tcp --svg "$OUT/tls-compare.svg"

echo >&2
echo "connection setup: bench --reconnect, $HANDSHAKE_CONNECTIONS connections, 64 B, ${DURATION}s" >&2
for round in $(seq "$ROUNDS"); do
  for name in tcp tls tls-resume; do
    resume=()
    [ "$name" = tls-resume ] && resume=(--tls-resume)
    # shellcheck disable=SC2046
    report=$("$bin/echo-client" bench $(target "${name%-resume}") --reconnect "${resume[@]}" \
      --connections "$HANDSHAKE_CONNECTIONS" --size 64 --duration "$DURATION" --warmup "$WARMUP" --json) || true
    printf 'round %s  %s  connections/s %s  p99 %s us  errors %s\n' "$round" "$name" \
      "$(echo "$report" | grep -o '"msgs_per_sec":[0-9.]*' | cut -d: -f2)" \
      "$(echo "$report" | grep -o '"p99":[0-9.]*' | cut -d: -f2)" \
      "$(echo "$report" | grep -o '"errors":[0-9-]*' | cut -d: -f2)"
  done
done
