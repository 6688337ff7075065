#!/usr/bin/env python3
"""Idle WebSocket connections against a running echod (or any ws echo
server): opens N WebSockets that each echo one message and then stay idle,
and prints the server's RSS per connection. Raw sockets, so the client
costs nothing of its own to measure.
Usage: scripts/idle-ws.py PORT SERVER_PID N"""
import base64, os, socket, sys, time
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(bytes([0x82, 0x84, 0, 0, 0, 0]) + b"warm")  # masked binary "warm"
    echo = b""
    while len(echo) < 6:
        echo += s.recv(6 - len(echo))
    assert echo == bytes([0x82, 4]) + b"warm", echo
    return s
keep = [conn()]
time.sleep(0.5)
base = rss()
for _ in range(n):
    keep.append(conn())
time.sleep(1)
after = rss()
print(f"{n} idle WebSocket connections (each echoed one message): RSS {base} -> {after} KiB, {(after-base)*1024/n:.0f} B per connection")
