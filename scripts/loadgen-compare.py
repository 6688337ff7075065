#!/usr/bin/env python3
"""Servers side by side under the C `loadgen` (../shared/peers, built with
build.sh): for every cell, every round runs each server once, in turn
(A B C A B C ...: the machines are noisy, so compare alternating runs and
quote medians). Per server and cell: median msgs/s, p99 and server CPU per
message (from /proc, all threads), and each as a ratio to the first server.

  scripts/loadgen-compare.py --loadgen /tmp/peers/loadgen --rounds 5 \\
      --server "epoll_echo=/tmp/peers/epoll_echo {port}" \\
      --server "echod=target/release/echo-server --config /dev/null --listen 127.0.0.1:{port}" \\
      --cell 50:64:1 --cell 500:4096:1 [--mode lines|raw] [--secs 3] [--json OUT]
"""
import argparse, json, os, shlex, signal, socket, statistics, subprocess, sys, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid):
    ticks = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_once(args, command, cell):
    conns, size, pipeline = cell
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in shlex.split(command)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        if not wait_port(port):
            sys.exit(f"server did not start: {command}")
        time.sleep(0.2)
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [args.loadgen, "--host", "127.0.0.1", "--port", str(port), "--conns", str(conns),
             "--size", str(size), "--seconds", str(args.secs), "--mode", args.mode,
             "--pipeline", str(pipeline), "--warmup", str(args.warmup)],
            capture_output=True, text=True, timeout=args.secs + args.warmup + 30)
        cpu = cpu_seconds(server.pid) - before
        line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
        result = json.loads(line)
        if result.get("errors") or result.get("mismatches"):
            sys.exit(f"{command}: errors or mismatches: {line}")
        # CPU over warm-up and run; messages over the run only: scale.
        share = args.secs / (args.secs + args.warmup)
        result["cpu_us_per_msg"] = cpu * share / max(result["msgs"], 1) * 1e6
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--server", action="append", required=True, help="NAME=COMMAND with {port}")
    ap.add_argument("--cell", action="append", help="CONNECTIONS:SIZE:PIPELINE")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=float, default=3)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--mode", default="lines")
    ap.add_argument("--json", help="also write every run here (JSON lines)")
    args = ap.parse_args()
    servers = [s.split("=", 1) for s in args.server]
    cells = [tuple(map(int, c.split(":"))) for c in (args.cell or ["50:64:1", "500:64:1", "50:4096:1", "500:4096:1"])]
    runs = {}
    log = open(args.json, "w") if args.json else None
    for cell in cells:
        for _ in range(args.rounds):
            for name, command in servers:
                result = run_once(args, command, cell)
                runs.setdefault((cell, name), []).append(result)
                if log:
                    log.write(json.dumps({"server": name, "cell": list(cell), **result}) + "\n")
                    log.flush()
    base = servers[0][0]
    print(f"| cell ({args.mode}) | server | msgs/s | p99 µs | CPU µs/msg | msgs/s ratio | p99 ratio | CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for cell in cells:
        med = {name: {k: statistics.median(r[k] for r in runs[(cell, name)])
                      for k in ("msgs_per_s", "p99_us", "cpu_us_per_msg")} for name, _ in servers}
        for name, _ in servers:
            m, b = med[name], med[base]
            print(f"| {cell[0]} × {cell[1]} B × {cell[2]} | {name} | {m['msgs_per_s']:,.0f} | {m['p99_us']:.0f} | "
                  f"{m['cpu_us_per_msg']:.2f} | {m['msgs_per_s'] / b['msgs_per_s']:.2f} | "
                  f"{m['p99_us'] / b['p99_us']:.2f} | {m['cpu_us_per_msg'] / b['cpu_us_per_msg']:.2f} |")


main()
