#!/usr/bin/env python3
"""An independent QUIC client for tests/quic.rs, on aioquic (not quinn).

    quic_peer.py HOST PORT CA_FILE SCENARIO

Prints one JSON object with what it saw (bytes as hex); the Rust test
asserts on it. Scenarios: lines, frame_limit, streams, connections,
datagrams, alpn, raw, idle, shutdown, uni, per_ip, zero_rtt,
zero_rtt_mtls, stalled.
"""
import asyncio, json, os, ssl, sys, time

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic import events

HOST, PORT, CA, SCENARIO = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PATIENCE = 20


class Echo(QuicConnectionProtocol):
    """Collects every stream's bytes and end, datagrams, and the close."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data, self.ended, self.reset, self.stopped = {}, {}, {}, {}
        self.datagrams = []
        self.terminated = asyncio.get_event_loop().create_future()
        self.changed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, events.StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.ended[event.stream_id] = True
        elif isinstance(event, events.StreamReset):
            self.reset[event.stream_id] = event.error_code
        elif isinstance(event, events.StopSendingReceived):
            self.stopped[event.stream_id] = event.error_code
        elif isinstance(event, events.DatagramFrameReceived):
            self.datagrams.append(event.data)
        elif isinstance(event, events.ConnectionTerminated):
            if not self.terminated.done():
                self.terminated.set_result((event.error_code, event.reason_phrase))
        self.changed.set()

    async def until(self, condition):
        async def wait():
            while not condition():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), PATIENCE)

    def send(self, stream_id, data, end=False):
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    def done(self, stream_id):
        return stream_id in self.ended or stream_id in self.reset

    async def exchange(self, payload):
        """One stream: sends `payload`, finishes, returns the whole echo."""
        stream = self._quic.get_next_available_stream_id()
        self.send(stream, payload, end=True)
        await self.until(lambda: self.done(stream))
        return bytes(self.data.get(stream, b"")), stream in self.ended


def configuration(alpn=("echo",), datagrams=False, client_cert=False):
    config = QuicConfiguration(is_client=True, alpn_protocols=list(alpn))
    config.load_verify_locations(CA)
    if client_cert:
        pki = os.path.dirname(CA)
        config.load_cert_chain(os.path.join(pki, "client.pem"), os.path.join(pki, "client-key.pem"))
    config.server_name = "localhost"
    if datagrams:
        config.max_datagram_frame_size = 65536
    return config


def client(**kwargs):
    return connect(HOST, PORT, configuration=configuration(**kwargs), create_protocol=Echo,
                   wait_connected=True)


async def lines():
    async with client() as conn:
        payload = b"one\r\n" + b"\xff\xfe\x00 not utf-8\n" + b"last, unterminated"
        echoed, finished = await conn.exchange(payload)
        return {"sent": payload.hex(), "echoed": echoed.hex(), "finished": finished}


async def frame_limit():
    # Server runs with --max-frame-length 64.
    async with client() as conn:
        long = conn._quic.get_next_available_stream_id()
        conn.send(long, b"fits\n" + b"x" * 1000 + b"\n")
        other, _ = await conn.exchange(b"other stream\n")
        await conn.until(lambda: conn.done(long))
        after, _ = await conn.exchange(b"still served\n")
        return {"long": bytes(conn.data.get(long, b"")).hex(),
                "long_finished": long in conn.ended, "long_reset": long in conn.reset,
                "other": other.hex(), "after": after.hex()}


async def streams():
    async with client() as conn:
        payloads = [f"stream {i} ".encode() * (i + 1) + b"\n" for i in range(50)]
        echoes = await asyncio.gather(*(conn.exchange(p) for p in payloads))
        return {"all_equal": all(e == p and f for (e, f), p in zip(echoes, payloads)),
                "count": len(echoes)}


async def connections():
    async def one(i):
        async with client() as conn:
            payload = f"connection {i}\n".encode()
            echoed, finished = await conn.exchange(payload)
            return echoed == payload and finished
    results = await asyncio.gather(*(one(i) for i in range(50)))
    return {"ok": sum(results), "count": len(results)}


async def datagrams():
    async with client(datagrams=True) as conn:
        # Each fits one packet at QUIC's minimum MTU (1200 B, less headers).
        sent = [os.urandom(n) for n in (1, 100, 500, 1000)]
        for d in sent:
            conn._quic.send_datagram_frame(d)
        conn.transmit()
        await conn.until(lambda: len(conn.datagrams) >= len(sent))
        return {"same": sorted(sent) == sorted(conn.datagrams), "count": len(conn.datagrams)}


async def alpn():
    try:
        async with client(alpn=("h3",)) as conn:
            return {"connected": True}
    except ConnectionError as error:
        return {"connected": False, "error": str(error)}


async def raw():
    # Server runs with --framing raw.
    async with client() as conn:
        payload = os.urandom(1 << 20)
        echoed, finished = await conn.exchange(payload)
        return {"equal": echoed == payload, "finished": finished, "len": len(echoed)}


async def idle():
    # Server runs with --idle-timeout 0.5: a silent connection ends.
    started = time.monotonic()
    async with client() as conn:
        stream = conn._quic.get_next_available_stream_id()
        conn.send(stream, b"hello\n")
        await conn.until(lambda: bytes(conn.data.get(stream, b"")) == b"hello\n")
        await asyncio.wait_for(asyncio.shield(conn.terminated), PATIENCE)
        return {"terminated_after_s": time.monotonic() - started}


async def shutdown():
    # Prints READY once a stream is open and echoing, then waits for the
    # test's SIGTERM to the server.
    async with client() as conn:
        stream = conn._quic.get_next_available_stream_id()
        conn.send(stream, b"before\n")
        await conn.until(lambda: bytes(conn.data.get(stream, b"")) == b"before\n")
        conn.send(stream, b"pending\n")
        await conn.until(lambda: bytes(conn.data.get(stream, b"")) == b"before\npending\n")
        print("READY", flush=True)
        code, reason = await asyncio.wait_for(asyncio.shield(conn.terminated), PATIENCE)
        return {"echoed": bytes(conn.data.get(stream, b"")).hex(),
                "finished": stream in conn.ended, "code": code, "reason": reason}


async def uni():
    async with client() as conn:
        stream = conn._quic.get_next_available_stream_id(is_unidirectional=True)
        conn.send(stream, b"one way\n")
        await conn.until(lambda: stream in conn.stopped)
        echoed, finished = await conn.exchange(b"bidi still works\n")
        return {"stopped": True, "echoed": echoed.hex(), "finished": finished}


async def per_ip():
    # Server runs with --max-connections-per-ip 1.
    async with client() as first:
        echoed, _ = await first.exchange(b"first\n")
        try:
            async with client() as second:
                await second.exchange(b"second\n")
                second_refused = False
        except ConnectionError:
            second_refused = True
    async with client() as third:
        third_echoed, _ = await third.exchange(b"third\n")
    return {"first": echoed.hex(), "second_refused": second_refused, "third": third_echoed.hex()}


class Sink:
    def sendto(self, data, addr):
        pass


class Withholding(Echo):
    """Sends nothing once `hold` is set: not its acknowledgements, not its
    handshake Finished."""

    hold = False

    def transmit(self):
        if not self.hold:
            return super().transmit()
        real, self._transport = self._transport, Sink()
        try:
            super().transmit()
        finally:
            self._transport = real


async def ticket(client_cert=False):
    """A first connection: its echo of one line, and the session ticket
    the server sent it."""
    tickets, got = [], asyncio.Event()

    def keep(ticket):
        tickets.append(ticket)
        got.set()

    async with connect(HOST, PORT, configuration=configuration(client_cert=client_cert),
                       create_protocol=Echo, session_ticket_handler=keep) as first:
        echoed, _ = await first.exchange(b"first\n")
        await asyncio.wait_for(got.wait(), PATIENCE)
    return echoed, tickets[-1]


def resuming(session_ticket, client_cert=False):
    """A second connection resuming with `session_ticket` that, once its
    first flight (the Initial and the 0-RTT line) is out, sends nothing:
    not even its Finished (see `send_early`)."""
    config = configuration(client_cert=client_cert)
    config.session_ticket = session_ticket
    return connect(HOST, PORT, configuration=config, create_protocol=Withholding,
                   wait_connected=False)


def send_early(conn):
    stream = conn._quic.get_next_available_stream_id()
    # The first transmit: the Initial and the 0-RTT packet together.
    conn.send(stream, b"early\n", end=True)
    conn.hold = True
    return stream


async def zero_rtt():
    # A first connection keeps the server's session ticket; a second
    # resumes with it, sends a line as 0-RTT data in its first flight and
    # then nothing more: the echo can only come from a server that serves
    # 0-RTT data at 0.5-RTT.
    first_echo, kept = await ticket()
    async with resuming(kept) as second:
        stream = send_early(second)
        await second.until(lambda: second.done(stream))
        result = {"first": first_echo.hex(), "early": bytes(second.data.get(stream, b"")).hex(),
                  "finished": stream in second.ended,
                  "ticket_early_data": kept.max_early_data_size,
                  "resumed": second._quic.tls.session_resumed,
                  "early_data_accepted": second._quic.tls.early_data_accepted,
                  "handshake_done": second._connected}
        second.hold = False
        return result


async def zero_rtt_mtls():
    # As zero_rtt, against a server that asks for a client certificate:
    # it must not echo before the client's Finished (which proves the
    # certificate), so the withholding client gets no echo, only the close
    # at the handshake timeout.
    first_echo, kept = await ticket(client_cert=True)
    async with resuming(kept, client_cert=True) as second:
        stream = send_early(second)
        code, _ = await asyncio.wait_for(asyncio.shield(second.terminated), PATIENCE)
        return {"first": first_echo.hex(), "early": bytes(second.data.get(stream, b"")).hex(),
                "code": code}


async def stalled():
    # Sends its first flight and then nothing: the handshake never
    # completes. Waits for the server to give up and close.
    started = time.monotonic()
    async with connect(HOST, PORT, configuration=configuration(), create_protocol=Withholding,
                       wait_connected=False) as conn:
        conn.transmit()  # the Initial: `wait_connected=False` has not sent it
        conn.hold = True
        code, reason = await asyncio.wait_for(asyncio.shield(conn.terminated), PATIENCE)
        return {"closed_after_s": time.monotonic() - started, "code": code, "reason": reason}


result = asyncio.run(globals()[SCENARIO]())
print(json.dumps(result), flush=True)
