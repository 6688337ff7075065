#!/usr/bin/env bash
# WebSocket echo: echod's ws: listener against the tokio-tungstenite
# echo-server shape (examples/tungstenite_echo.rs), alternating servers
# inside every round (noise here is ±15-30 %: quote medians of per-round
# ratios), with `echo-client bench ws://…` (binary messages, every echo
# verified), with each server's CPU per message (--server-pid). Prints
# one line per run and a table of median ratios.
#
#   ROUNDS=5 CELLS="50:64 500:64 50:4096 500:4096" scripts/ws-compare.sh
#
# EXTRA adds servers to every round, each "name=command with {port}"
# separated by ';', e.g. a build of fastwebsockets' own echo example:
#   EXTRA="fastwebsockets=/path/to/fws_echo {port}" scripts/ws-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
CELLS=${CELLS:-"50:64 500:64 50:4096 500:4096"}
SERVER_FLAGS=${SERVER_FLAGS:-}
EXTRA=${EXTRA:-}
declare -A extra_command=()
servers=(echod tungstenite)
if [[ -n $EXTRA ]]; then
  IFS=';' read -r -a extras <<< "$EXTRA"
  for entry in "${extras[@]}"; do extra_command[${entry%%=*}]=${entry#*=}; servers+=("${entry%%=*}"); done
fi
OUT=${OUT:-target/ws-compare}
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"
cargo build --release --quiet --bins --examples
bin=target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name -> pid in $pid, port in $port
  port=$(free_port)
  case "$1" in
    echod) "$bin/echo-server" --config /dev/null --listen "ws:127.0.0.1:$port" --max-connections 20000 --log-level warn $SERVER_FLAGS 2>/dev/null & ;;
    tungstenite) "$bin/examples/tungstenite_echo" "127.0.0.1:$port" 2>/dev/null & ;;
    *) read -r -a command <<< "${extra_command[$1]//\{port\}/$port}"; "${command[@]}" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
  echo "server $1 did not start" >&2; exit 1
}
for round in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    conns=${cell%%:*}; size=${cell##*:}
    for server in "${servers[@]}"; do
      start "$server"
      json=$("$bin/echo-client" bench "ws://127.0.0.1:$port/" --connections "$conns" --size "$size" \
        --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" --json)
      kill "$pid"; wait "$pid" 2>/dev/null || true
      echo "{\"round\":$round,\"cell\":\"$cell\",\"server\":\"$server\",\"report\":$json}" >> "$results"
      echo "round $round $cell $server: $(echo "$json" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(int(r["msgs_per_sec"]), "msgs/s p99", r["latency_us"]["p99"], "us cpu/msg", round(r.get("server_cpu_us_per_msg", 0), 2), "us mismatches", r["mismatches"])')"
    done
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
cells = sorted({r["cell"] for r in runs}, key=lambda c: [int(x) for x in c.split(":")])
others = sorted({r["server"] for r in runs} - {"echod"}, key=lambda n: (n != "tungstenite", n))
for other in others:
    print(f"\n| cell (conns:size) | msgs/s ratio per round (echod / {other}) | median | p99 ratio median | server CPU/msg ratio median |")
    print("|---|---|---:|---:|---:|")
    for cell in cells:
        by = {}
        for r in runs:
            if r["cell"] == cell:
                by.setdefault(r["round"], {})[r["server"]] = r["report"]
        pairs = [(v["echod"], v[other]) for v in by.values() if "echod" in v and other in v]
        rates = [a["msgs_per_sec"] / b["msgs_per_sec"] for a, b in pairs]
        p99 = [a["latency_us"]["p99"] / b["latency_us"]["p99"] for a, b in pairs]
        cpu = [a["server_cpu_us_per_msg"] / b["server_cpu_us_per_msg"] for a, b in pairs]
        print(f"| {cell} | {' '.join(f'{x:.2f}' for x in rates)} | {statistics.median(rates):.2f} | {statistics.median(p99):.2f} | {statistics.median(cpu):.2f} |")
PY
