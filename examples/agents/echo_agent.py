#!/usr/bin/env python3
"""A dependency-free WebSocket echo agent (Python 3 standard library only).

myagent-manager starts it with MYAGENT_HOST / MYAGENT_PORT (and MYAGENT_SERVICE_NAME, ...).
It answers the WebSocket handshake on any path, echoes text and binary frames, answers pings,
and prints log lines at several levels to stdout and stderr.

Misbehaviour for tests (environment variables):
  ECHO_EXIT_AT_ONCE=<code>     print an error to stderr and exit with <code> before listening
  ECHO_CRASH_AFTER=<seconds>   exit with code 3 that long after listening
  ECHO_HANG_HANDSHAKE=1        accept TCP connections but never answer the upgrade
  ECHO_HANG_AFTER=<seconds>    answer handshakes only that long after listening (then hang)
  ECHO_SPAWN_CHILD=1           start a child process (`sleep 3600`) and print `child_pid=<pid>`
  ECHO_GRANDCHILD_HOLDS_PORT=1 once listening, start a child process that inherits the listening
                               socket and sleeps, and print `grandchild_pid=<pid>` (it outlives
                               this agent and keeps the port, as a forked worker would)
  ECHO_IGNORE_SIGTERM=1        ignore SIGTERM (the supervisor must SIGKILL after the grace)
  ECHO_STARTUP_DELAY=<seconds> wait before listening
  ECHO_LOG_EVERY=<seconds>     print a `tick <n>` line periodically
"""

import asyncio
import base64
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NAME = os.environ.get("MYAGENT_SERVICE_NAME", "echo-agent")
LISTENING_SINCE = [None]


def log_out(msg):
    print(msg, flush=True)


def log_err(msg):
    print(msg, file=sys.stderr, flush=True)


async def read_frame(reader):
    head = await reader.readexactly(2)
    fin, opcode = head[0] & 0x80, head[0] & 0x0F
    masked, length = head[1] & 0x80, head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if masked else b""
    payload = await reader.readexactly(length)
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload


def frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


async def handshake(reader, writer):
    request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    key = headers.get("sec-websocket-key")
    if not key or "websocket" not in headers.get("upgrade", "").lower():
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return None
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return lines[0], headers


async def serve(reader, writer):
    hang_after = float(os.environ.get("ECHO_HANG_AFTER", "0"))
    hung = hang_after > 0 and LISTENING_SINCE[0] is not None and time.monotonic() - LISTENING_SINCE[0] > hang_after
    if os.environ.get("ECHO_HANG_HANDSHAKE") == "1" or hung:
        await asyncio.sleep(3600)
        return
    try:
        hs = await handshake(reader, writer)
        if hs is None:
            return
        request_line, headers = hs
        if headers.get("user-agent") != "myagent-health-check":
            log_out(json.dumps({"level": "info", "msg": f"client connected: {request_line}"}))
        fragments, first_op = b"", None
        while True:
            fin, opcode, payload = await read_frame(reader)
            if opcode == 0x8:  # close: echo the status code back
                writer.write(frame(0x8, payload[:2]))
                await writer.drain()
                return
            if opcode == 0x9:  # ping
                writer.write(frame(0xA, payload))
                await writer.drain()
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                first_op, fragments = opcode, payload
            else:  # continuation
                fragments += payload
            if fin:
                if first_op == 0x1 and fragments.startswith(b"log:"):
                    # "log:<text>" makes the agent print <text> (tests drive log lines this way).
                    log_out(fragments[4:].decode("utf-8", "replace"))
                writer.write(frame(first_op, fragments))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def ticker(every):
    n = 0
    while True:
        await asyncio.sleep(every)
        n += 1
        log_out(f"tick {n}")


async def main():
    host = os.environ.get("MYAGENT_HOST", "127.0.0.1")
    port = int(os.environ.get("MYAGENT_PORT", "8765"))
    if "ECHO_EXIT_AT_ONCE" in os.environ:
        log_err(f"ERROR {NAME}: cannot start: simulated configuration error")
        log_err("Traceback (most recent call last): simulated")
        sys.exit(int(os.environ["ECHO_EXIT_AT_ONCE"] or "1"))
    if os.environ.get("ECHO_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    delay = float(os.environ.get("ECHO_STARTUP_DELAY", "0"))
    if delay > 0:
        await asyncio.sleep(delay)
    if os.environ.get("ECHO_SPAWN_CHILD") == "1":
        child = subprocess.Popen(["sleep", "3600"])
        log_out(f"child_pid={child.pid}")
    server = await asyncio.start_server(serve, host, port)
    LISTENING_SINCE[0] = time.monotonic()
    if os.environ.get("ECHO_GRANDCHILD_HOLDS_PORT") == "1":
        fds = [s.fileno() for s in server.sockets]
        holder = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
        log_out(f"grandchild_pid={holder.pid}")
    log_out(f"INFO {NAME} listening on ws://{host}:{port} (pid {os.getpid()})")
    log_err("WARNING this is a warning line on stderr")
    log_out("level=debug a debug line")
    log_err(json.dumps({"level": "error", "msg": "an error line in JSON"}))
    tasks = []
    every = float(os.environ.get("ECHO_LOG_EVERY", "0"))
    if every > 0:
        tasks.append(asyncio.ensure_future(ticker(every)))
    crash = float(os.environ.get("ECHO_CRASH_AFTER", "0"))
    async with server:
        if crash > 0:
            await asyncio.sleep(crash)
            log_err(f"ERROR {NAME}: simulated crash")
            os._exit(3)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
