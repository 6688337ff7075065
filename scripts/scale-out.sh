#!/usr/bin/env bash
# The scale-out recipe, measured: deploy/haproxy-scale-out.cfg in front of
# PROCESSES echod processes sharing one port with SO_REUSEPORT. Under load
# through HAProxy (every echo verified by echo-client bench), one process
# is SIGKILLed mid-run; the report gives the connections cut, the bytes
# corrupted (must be 0) and the new connections the others served after.
#
#   scripts/scale-out.sh
#   PROCESSES=4 CONNECTIONS=200 DURATION=6 KILL_AT=2 scripts/scale-out.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROCESSES=${PROCESSES:-4}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-6}
KILL_AT=${KILL_AT:-2}
OUT=${OUT:-target/scale-out}
mkdir -p "$OUT"
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || { echo "scale-out: haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }

cargo build --release --quiet --bins
bin=target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done
              echo "scale-out: nothing listens on $1" >&2; exit 1; }
connections() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "echod_connections_total" { print $2 }'; }

front=$(free_port); back=$(free_port)
pids=(); admins=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null' EXIT
for i in $(seq "$PROCESSES"); do
  admin=$(free_port)
  "$bin/echo-server" --config /dev/null --listen "127.0.0.1:$back" --reuse-port true --workers 1 \
    --proxy-protocol v2 --admin "127.0.0.1:$admin" --log-level warn 2>"$OUT/echod-$i.log" &
  pids+=($!); admins+=("$admin")
  wait_port "$admin"
done
sed -e "s/bind 127.0.0.1:3600/bind 127.0.0.1:$front/" -e "s/127.0.0.1:3601/127.0.0.1:$back/" \
  deploy/haproxy-scale-out.cfg > "$OUT/haproxy.cfg"
"$haproxy" -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$front"

victim=${pids[0]}
echo "scale-out: $PROCESSES echod processes on 127.0.0.1:$back (SO_REUSEPORT), HAProxy on 127.0.0.1:$front"
echo "scale-out: $CONNECTIONS connections x 64 B for ${DURATION}s; SIGKILL to process 1 (pid $victim) at ${KILL_AT}s"
(sleep "$KILL_AT"; kill -KILL "$victim") &
killer=$!
"$bin/echo-client" bench "127.0.0.1:$front" --connections "$CONNECTIONS" --size 64 \
  --duration "$DURATION" --warmup 0 --json > "$OUT/during.json" 2>"$OUT/during.err" || true
wait "$killer"
before=(); for admin in "${admins[@]:1}"; do before+=("$(connections "$admin")"); done
# New connections after the loss: one per message.
"$bin/echo-client" bench "127.0.0.1:$front" --reconnect --connections 20 --size 64 \
  --duration 3 --warmup 0 --json > "$OUT/after.json" 2>"$OUT/after.err" || true
after=(); for admin in "${admins[@]:1}"; do after+=("$(connections "$admin")"); done

python3 - "$OUT" "$CONNECTIONS" "${before[*]}" "${after[*]}" <<'PY'
import json, sys
out, conns = sys.argv[1], int(sys.argv[2])
before, after = map(float, sys.argv[3].split()), map(float, sys.argv[4].split())
during = json.load(open(f"{out}/during.json"))
later = json.load(open(f"{out}/after.json"))
served = [int(a - b) for a, b in zip(after, before)]
print(f"during: {during['messages']:,} echoes verified, {during['msgs_per_sec']:,.0f} msgs/s, "
      f"{during['errors']} of {conns} connections cut, {during['mismatches']} mismatched echoes")
print(f"after:  {later['messages']:,} new connections, each one echo, {later['errors']} errors, "
      f"{later['mismatches']} mismatches; served by the survivors: {served}")
ok = during["mismatches"] == 0 and later["errors"] == 0 and later["mismatches"] == 0 \
     and all(s > 0 for s in served) and 0 < during["errors"] < conns
print("scale-out: OK" if ok else "scale-out: FAILED")
sys.exit(0 if ok else 1)
PY
