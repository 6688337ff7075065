#!/usr/bin/env bash
# Counts a running server's system calls per echoed message under load, with
# `strace -c -f` attached while `echo-client bench` runs (strace slows the
# server: read the ratios, not the rates).
#
#   scripts/syscalls-per-message.sh PORT CONNECTIONS SIZE PIPELINE [FRAMING]
set -euo pipefail
cd "$(dirname "$0")/.."
port=$1; connections=$2; size=$3; pipeline=$4; framing=${5:-lines}
pid=$(ss -ltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ -n "$pid" ] || { echo "nothing listens on port $port" >&2; exit 1; }
out=$(mktemp)
strace -c -f -p "$pid" -o "$out" 2>/dev/null & tracer=$!
sleep 0.5
messages=$(target/release/echo-client bench "127.0.0.1:$port" --connections "$connections" --size "$size" \
  --pipeline "$pipeline" --framing "$framing" --duration 2 --warmup 0 --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
kill -INT "$tracer"; wait "$tracer" || true
python3 - "$out" "$messages" <<'PY'
import sys
path, messages = sys.argv[1], max(int(sys.argv[2]), 1)
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[-1].isidentifier() and f[-1] != "total" and f[3].isdigit():
        calls[f[-1]] = int(f[3])
top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
print(f"{sum(calls.values()) / messages:.2f} syscalls per message ({messages} messages under strace): "
      + ", ".join(f"{name} {count / messages:.2f}" for name, count in top))
PY
rm -f "$out"
