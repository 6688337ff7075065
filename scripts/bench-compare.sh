#!/usr/bin/env bash
# Runs the same `echo-client bench` cells against echod and the baselines on
# loopback, alternating servers inside every cell and round (noise here is
# ±15-30 %: compare alternating runs, quote medians), then prints a table of
# median msgs/s and p99 with ratios, and draws docs/bench-compare.svg.
#
#   scripts/bench-compare.sh
#   ROUNDS=5 CELLS="50:64:1 500:64:1" scripts/bench-compare.sh
#   EXTRA_SERVERS="epoll_echo=/path/to/epoll_echo {port}" BASELINE=epoll_echo scripts/bench-compare.sh
#
# Settings (environment):
#   ROUNDS         rounds of every cell (default 1)
#   DURATION       measured seconds per run (default 2); WARMUP (default 0.5)
#   CELLS          space-separated CONNECTIONS:SIZE:PIPELINE (default: the 13 cells below)
#   SERVERS        which built-in servers to run (default: all of them)
#   EXTRA_SERVERS  ';'-separated NAME=COMMAND, {port} replaced by a free port;
#                  such servers get the lines load
#   BASELINE       server the ratios are against (default: first of EXTRA_SERVERS, else tokio_echo)
#   SERVER_FLAGS     extra flags for every echod (e.g. "--workers 1")
#   OUT            results folder (default target/bench-compare)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
CELLS=${CELLS:-"1:64:1 1:64:16 1:4096:1 1:4096:16 50:64:1 50:64:16 50:4096:1 50:4096:16 500:64:1 500:64:16 500:4096:1 500:4096:16 1:65536:4"}
SERVERS=${SERVERS:-"echod-lines echod-raw echod-length tokio_echo naive_lines_echo"}
EXTRA_SERVERS=${EXTRA_SERVERS:-}
SERVER_FLAGS=${SERVER_FLAGS:-}
OUT=${OUT:-target/bench-compare}
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"

cargo build --release --quiet --bins --examples
bin=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

names=() ; framings=() ; pids=() ; ports=()
start() { # NAME FRAMING COMMAND...
  local name=$1 framing=$2; shift 2
  local port; port=$(free_port)
  local cmd=("${@//\{port\}/$port}")
  "${cmd[@]}" >/dev/null 2>"$OUT/$name.log" &
  pids+=($!); names+=("$name"); framings+=("$framing"); ports+=("$port")
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "bench-compare: $name did not start (see $OUT/$name.log)" >&2; exit 1
}
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

IFS=';' read -r -a extras <<< "$EXTRA_SERVERS"
for extra in "${extras[@]}"; do
  [ -n "$extra" ] || continue
  read -r -a command <<< "${extra#*=}"
  start "${extra%%=*}" lines "${command[@]}"
done
for server in $SERVERS; do
  case $server in
    echod-lines|echod-raw|echod-length)
      # shellcheck disable=SC2086
      start "$server" "${server#echod-}" "$bin/echo-server" --listen "127.0.0.1:{port}" \
        --framing "${server#echod-}" --log-level warn --max-connections 20000 $SERVER_FLAGS ;;
    tokio_echo|naive_lines_echo) start "$server" lines "$bin/examples/$server" "127.0.0.1:{port}" ;;
    *) echo "bench-compare: unknown server $server" >&2; exit 2 ;;
  esac
done

default_baseline=tokio_echo
[ -n "${extras[0]:-}" ] && default_baseline=${extras[0]%%=*}
BASELINE=${BASELINE:-$default_baseline}

echo "servers: ${names[*]}; baseline: $BASELINE; $ROUNDS round(s) of ${DURATION}s (+${WARMUP}s warm-up) per cell" >&2
for round in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    IFS=: read -r connections size pipeline <<< "$cell"
    for i in "${!names[@]}"; do
      report=$("$bin/echo-client" bench "127.0.0.1:${ports[$i]}" --connections "$connections" --size "$size" \
        --pipeline "$pipeline" --framing "${framings[$i]}" --duration "$DURATION" --warmup "$WARMUP" --json) || true
      [ -n "$report" ] || report='{"messages":0,"msgs_per_sec":0,"errors":-1}'
      printf '{"round":%s,"server":"%s","connections":%s,"size":%s,"pipeline":%s,"report":%s}\n' \
        "$round" "${names[$i]}" "$connections" "$size" "$pipeline" "$report" >> "$results"
      echo "round $round  $cell  ${names[$i]}: $(echo "$report" | grep -o '"msgs_per_sec":[0-9.]*')" >&2
    done
  done
done

cargo run --release --quiet --example bench_report -- "$results" --baseline "$BASELINE" --svg docs/bench-compare.svg
