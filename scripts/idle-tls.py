#!/usr/bin/env python3
"""Idle TLS connections against a running echod: opens N TLS connections
that each echo one line and then stay idle, and prints the server RSS per
connection.  Usage: scripts/idle-tls.py PORT SERVER_PID N CA_FILE"""
import socket, ssl, sys, time
port, pid, n, ca = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
ctx = ssl.create_default_context(cafile=ca)
def conn():
    s = socket.create_connection(("127.0.0.1", port))
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"warm\n"); assert t.recv(16) == b"warm\n"
    return t
keep = [conn()]
time.sleep(0.5)
base = rss()
for _ in range(n):
    keep.append(conn())
time.sleep(1)
after = rss()
print(f"{n} idle TLS connections (each echoed one line): RSS {base} -> {after} KiB, {(after-base)*1024/n:.0f} B per connection")
