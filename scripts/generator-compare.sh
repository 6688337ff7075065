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
# build, alternated with the two and given its own columns). Each
# generator's own CPU per message is printed beside its msgs/s.
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

# Runs a generator; prints its msgs/s and its own CPU µs per message: the
# CPU of the whole run (connect, warm-up, window) over the messages it
# makes at the measured rate in warm-up plus window.
measure() {
  python3 - "$WARMUP" "$DURATION" "$@" <<'PY'
import json, resource, subprocess, sys
warmup, duration, command = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
out = subprocess.run(command, stdout=subprocess.PIPE, check=False).stdout
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
report = json.loads(out)
rate = report.get("msgs_per_sec", report.get("msgs_per_s"))
print(rate, 1e6 * (usage.ru_utime + usage.ru_stime) / max(rate * (warmup + duration), 1))
PY
}
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
bench() {
  measure "$1" bench "127.0.0.1:$port" --connections "$connections" --size "$size" \
    --duration "$DURATION" --warmup "$WARMUP" --framing "$MODE" --pipeline "$pipeline" --json
}

header="| connections × size, pipeline | reference msgs/s | CPU µs/msg | echo-client bench msgs/s | CPU µs/msg | msgs/s ratio | CPU ratio |"
rule="|---|---:|---:|---:|---:|---:|---:|"
if [[ -n $OTHER ]]; then header+=" OTHER msgs/s | CPU µs/msg | msgs/s ratio | CPU ratio |"; rule+="---:|---:|---:|---:|"; fi
echo "$header"; echo "$rule"
for cell in $CELLS; do
  IFS=: read -r connections size pipeline <<< "$cell"
  ours=(); theirs=(); others=(); ours_cpu=(); theirs_cpu=(); others_cpu=()
  for _ in $(seq "$ROUNDS"); do
    read -r r c < <(measure "$LOADGEN" --host 127.0.0.1 --port "$port" --conns "$connections" --size "$size" \
      --seconds "$DURATION" --warmup "$WARMUP" --mode "$MODE" --pipeline "$pipeline")
    theirs+=("$r"); theirs_cpu+=("$c")
    read -r r c < <(bench target/release/echo-client); ours+=("$r"); ours_cpu+=("$c")
    if [[ -n $OTHER ]]; then read -r r c < <(bench "$OTHER"); others+=("$r"); others_cpu+=("$c"); fi
  done
  t=$(echo "${theirs[*]}" | median); tc=$(echo "${theirs_cpu[*]}" | median)
  o=$(echo "${ours[*]}" | median); oc=$(echo "${ours_cpu[*]}" | median)
  row=$(printf '| %s × %s B, %s | %.0f | %.2f | %.0f | %.2f | %s | %s |' "$connections" "$size" "$pipeline" \
    "$t" "$tc" "$o" "$oc" "$(ratio "$o" "$t")" "$(ratio "$oc" "$tc")")
  if [[ -n $OTHER ]]; then
    x=$(echo "${others[*]}" | median); xc=$(echo "${others_cpu[*]}" | median)
    row+=$(printf ' %.0f | %.2f | %s | %s |' "$x" "$xc" "$(ratio "$x" "$t")" "$(ratio "$xc" "$tc")")
  fi
  echo "$row"
done
