#!/usr/bin/env bash
# Is `echo-client bench` fast enough not to be the bottleneck? Runs it and a
# reference load generator (the C loadgen from the team's peers) against the
# same server, alternating A B A B … in every cell, and prints median msgs/s
# of each with the ratio.
#
#   LOADGEN=/path/to/loadgen SERVER="/path/to/epoll_echo {port}" scripts/generator-compare.sh
#
# Settings: ROUNDS (5), DURATION (2), WARMUP (0.5), CELLS ("50:64:1 500:64:1 50:4096:1 500:4096:1 50:64:16"),
# MODE lines|raw (lines), OTHER (another echo-client binary, say an older
# build, alternated with the two and given its own columns).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LOADGEN:?set LOADGEN to the reference load generator}"
: "${SERVER:?set SERVER to the server command, with {port}}"
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-2}; WARMUP=${WARMUP:-0.5}; MODE=${MODE:-lines}; OTHER=${OTHER:-}
CELLS=${CELLS:-"50:64:1 500:64:1 50:4096:1 500:4096:1 50:64:16"}

cargo build --release --quiet --bin echo-client
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
read -r -a command <<< "${SERVER//\{port\}/$port}"
"${command[@]}" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

rate() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r.get("msgs_per_sec", r.get("msgs_per_s")))'; }
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
bench() {
  "$1" bench "127.0.0.1:$port" --connections "$connections" --size "$size" \
    --duration "$DURATION" --warmup "$WARMUP" --framing "$MODE" --pipeline "$pipeline" --json | rate
}

if [[ -n $OTHER ]]; then
  echo "| connections × size, pipeline | reference msgs/s (median) | echo-client bench msgs/s (median) | ratio | OTHER msgs/s (median) | ratio |"
  echo "|---|---:|---:|---:|---:|---:|"
else
  echo "| connections × size, pipeline | reference msgs/s (median) | echo-client bench msgs/s (median) | ratio |"
  echo "|---|---:|---:|---:|"
fi
for cell in $CELLS; do
  IFS=: read -r connections size pipeline <<< "$cell"
  ours=(); theirs=(); others=()
  for _ in $(seq "$ROUNDS"); do
    theirs+=("$("$LOADGEN" --host 127.0.0.1 --port "$port" --conns "$connections" --size "$size" \
      --seconds "$DURATION" --warmup "$WARMUP" --mode "$MODE" --pipeline "$pipeline" | rate)")
    ours+=("$(bench target/release/echo-client)")
    if [[ -n $OTHER ]]; then others+=("$(bench "$OTHER")"); fi
  done
  t=$(echo "${theirs[*]}" | median); o=$(echo "${ours[*]}" | median)
  row=$(printf '| %s × %s B, %s | %.0f | %.0f | %s |' "$connections" "$size" "$pipeline" "$t" "$o" "$(ratio "$o" "$t")")
  if [[ -n $OTHER ]]; then
    x=$(echo "${others[*]}" | median)
    row+=$(printf ' %.0f | %s |' "$x" "$(ratio "$x" "$t")")
  fi
  echo "$row"
done
