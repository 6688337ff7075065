#!/usr/bin/env bash
# Builds the container image from the host's static binaries
# (`podman build --target prebuilt`) and checks it as far as this machine
# allows: podman can build images here but not run containers (crun cannot
# set RLIMIT_NOFILE in this sandbox), so the image's root file system is
# mounted and its entrypoint run from it with the image's own user and
# environment, in a private network namespace (where its fixed ports 3600
# and 9090 are free by construction). Root only; .ci/run calls it.
#
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile dist --bins --target x86_64-unknown-linux-gnu
#   scripts/check-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tag=echod:check
fail() { echo "check-image: $*" >&2; exit 1; }

podman build --quiet --target prebuilt -t "$tag" . >/dev/null
config=$(podman image inspect "$tag" --format '{{json .Config}}')
python3 - "$config" <<'PY' || fail "image config: $config"
import json, sys
c = json.loads(sys.argv[1])
assert c["User"] == "65532:65532", c["User"]
assert c["Entrypoint"] == ["/echo-server"], c["Entrypoint"]
assert set(c["ExposedPorts"]) == {"3600/tcp", "3600/udp", "9090/tcp"}, c["ExposedPorts"]
env = dict(e.split("=", 1) for e in c["Env"])
assert env["ECHOD_LISTEN"] == "0.0.0.0:3600" and env["ECHOD_ADMIN"] == "0.0.0.0:9090"
assert env["ECHOD_LOG_FORMAT"] == "json"
PY

root=$(podman image mount "$tag")
trap 'podman image unmount "$tag" >/dev/null 2>&1 || true' EXIT
files=$(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')
[ "$files" = "./echo-client ./echo-server " ] || fail "unexpected files in the image: $files"
env_args=()
while IFS= read -r line; do env_args+=("$line"); done < <(
  podman image inspect "$tag" --format '{{range .Config.Env}}{{println .}}{{end}}' | grep .)

log=$(mktemp)
# In the namespace: loopback up, the entrypoint as 65532 from the image's
# root, then an echo on 3600, readiness on 9090, and SIGTERM.
unshare --net bash -c '
  set -euo pipefail
  ip link set lo up
  root=$1 log=$2; shift 2
  env -i "$@" chroot --userspec=65532:65532 --groups=65532 "$root" /echo-server 2>"$log" &
  server=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/3600) 2>/dev/null && break; sleep 0.05; done
  reply=$(printf "hello from the image\n" | nc -N 127.0.0.1 3600)
  [ "$reply" = "hello from the image" ] || { echo "echo: got [$reply]" >&2; exit 1; }
  grep -Eq "^Uid:[[:space:]]+65532[[:space:]]" /proc/$server/status || { echo "not running as 65532" >&2; exit 1; }
  # No resolver in the image: localhost must still mean the loopback.
  reply=$(printf "via localhost\n" | chroot --userspec=65532:65532 --groups=65532 "$root" /echo-client localhost:3600)
  [ "$reply" = "via localhost" ] || { echo "echo-client localhost: got [$reply]" >&2; exit 1; }
  ready=$(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:9090/readyz)
  [ "$ready" = 200 ] || { echo "readyz: $ready" >&2; exit 1; }
  kill -TERM "$server"
  wait "$server"
' check "$root" "$log" "${env_args[@]}" || { cat "$log" >&2; fail "the image's entrypoint did not serve"; }
grep -q '"message":"listening on 0.0.0.0:3600"' "$log" || { cat "$log" >&2; fail "no JSON 'listening on 0.0.0.0:3600' line"; }
grep -q '"message":"shutdown complete"' "$log" || { cat "$log" >&2; fail "no clean shutdown"; }
rm -f "$log"
echo "check-image: $tag built; config, files, entrypoint (as 65532, JSON logs, echo on 3600, echo-client to localhost without a resolver, /readyz on 9090, SIGTERM) checked"
