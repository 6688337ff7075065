#!/usr/bin/env bash
# QUIC echo against TLS over TCP (and plain TCP), one echod serving all
# three, alternating transports inside every cell and round (noise here is
# ±15-30 %: quote medians). echo-client bench drives every cell with
# --server-pid, so CPU per message is the server's. Prints one table.
#
#   scripts/quic-compare.sh
#   ROUNDS=5 CELLS="50:4096" DURATION=2 scripts/quic-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-2}
CELLS=${CELLS:-"1:64 50:64 500:64 1:4096 50:4096 500:4096"}
OUT=${OUT:-target/quic-compare}
mkdir -p "$OUT"
cargo build --release --quiet --bins
bin=target/release
pki=$OUT/pki
mkdir -p "$pki"
if [ ! -f "$pki/server.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" \
    -out "$pki/ca.pem" -days 30 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/server-key.pem" \
    -out "$pki/server.csr" -subj /CN=localhost 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > "$pki/ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/server.pem" -days 30 -extfile "$pki/ext" 2>/dev/null
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(free_port); tls=$(free_port); quic=$(free_port)
"$bin/echo-server" --config /dev/null --listen "127.0.0.1:$tcp" --listen "tls:127.0.0.1:$tls" \
  --listen "quic:127.0.0.1:$quic" --tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem" \
  --max-connections 20000 --log-level warn 2>"$OUT/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$tls") 2>/dev/null && break; sleep 0.05; done
results=$OUT/results.jsonl
: > "$results"
for cell in $CELLS; do
  conns=${cell%%:*}; size=${cell##*:}
  for round in $(seq "$ROUNDS"); do
    for transport in tcp tls quic; do
      case $transport in
        tcp) addr="127.0.0.1:$tcp"; tls_args=() ;;
        tls) addr="tls:127.0.0.1:$tls"; tls_args=(--tls-ca "$pki/ca.pem") ;;
        quic) addr="quic:127.0.0.1:$quic"; tls_args=(--tls-ca "$pki/ca.pem") ;;
      esac
      report=$("$bin/echo-client" bench "$addr" "${tls_args[@]}" --connections "$conns" --size "$size" \
        --duration "$DURATION" --warmup 0.5 --server-pid "$server" --json)
      echo "{\"transport\":\"$transport\",\"cell\":\"$cell\",\"round\":$round,\"report\":$report}" >> "$results"
    done
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cells = list(dict.fromkeys(r["cell"] for r in rows))
print("| cell | transport | msgs/s | p99 µs | server CPU µs/msg | msgs/s / TLS |")
print("|---|---|---:|---:|---:|---:|")
for cell in cells:
    med = {}
    for t in ("tcp", "tls", "quic"):
        rs = [r["report"] for r in rows if r["cell"] == cell and r["transport"] == t]
        med[t] = (statistics.median(r["msgs_per_sec"] for r in rs),
                  statistics.median(r["latency_us"]["p99"] for r in rs),
                  statistics.median(r.get("server_cpu_us_per_msg") or 0 for r in rs))
    conns, size = cell.split(":")
    for t in ("tcp", "tls", "quic"):
        m = med[t]
        print(f"| {conns} × {size} B | {t} | {m[0]:,.0f} | {m[1]:.0f} | {m[2]:.2f} | {m[0] / med['tls'][0]:.2f} |")
PY
