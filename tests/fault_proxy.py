"""A fault-injecting HTTP proxy in front of an S3 server (SeaweedFS in the tests).

    python -m tests.fault_proxy --upstream 127.0.0.1:8333 [--slowdown-every 4] [--reset-every 5]

prints ``PORT <n>`` once it listens on a free loopback port, then forwards every request to
the upstream server, except that

* every ``--slowdown-every``-th request is answered ``503 SlowDown`` with an S3 XML error body
  and never reaches the server (what S3 does when throttling: the request had no effect);
* every ``--reset-every``-th response with a body of at least ``--reset-min-bytes`` is cut in
  the middle of its body by a TCP reset (the server did the work; the client must retry).
  Ranged GETs (GDAL's /vsis3 block reads) are cut only with ``--reset-ranged``: GDAL 3.10
  (rasterio 1.4 wheels) keeps the short body of a reset 206 response as the region's data and
  the block then fails to decode for the rest of the process -- tried here: neither a reopen
  nor ``VSICurlPartialClearCache`` recovers it -- so that fault is a known GDAL limit (README),
  not one samsp can retry.

It runs as its own process (never inside a process that does GDAL writes: STACK.md) and is
stopped by PID. Each connection carries one request (``Connection: close``), which keeps the
forwarding simple and lets every fault hit a fresh request. ``--fail-all`` answers 503 to
every request: a client's retries then run out and its final error is what the user sees.
"""
from __future__ import annotations

import argparse
import itertools
import socket
import struct
import sys
import threading

SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId>"
            b"</Error>")


class Counters:
    """Request and response counters shared by the handler threads (faults are periodic, so a
    retry usually lands on a clean request and runs stay reproducible)."""

    def __init__(self) -> None:
        self.requests = itertools.count(1)
        self.bodies = itertools.count(1)
        self.lock = threading.Lock()

    def next_request(self) -> int:
        with self.lock:
            return next(self.requests)

    def next_body(self) -> int:
        with self.lock:
            return next(self.bodies)


def read_until(sock: socket.socket, buf: bytearray, marker: bytes, start: int = 0) -> int:
    """Read into ``buf`` until ``marker`` is in it at or after ``start``; the index after it."""
    while buf.find(marker, start) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        buf += chunk
    return buf.find(marker, start) + len(marker)


def read_exact(sock: socket.socket, buf: bytearray, size: int) -> None:
    while len(buf) < size:
        chunk = sock.recv(max(65536, size - len(buf)))
        if not chunk:
            raise ConnectionError("client closed")
        buf += chunk


def read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    """A chunked request body, kept encoded (forwarded as sent)."""
    pos = 0
    while True:
        end = read_until(sock, buf, b"\r\n", pos)
        size = int(bytes(buf[pos:end - 2]).split(b";")[0], 16)
        if size == 0:  # the last chunk, then optional trailers and an empty line
            return bytes(buf[:read_until(sock, buf, b"\r\n\r\n", end - 2)])
        read_exact(sock, buf, end + size + 2)
        pos = end + size + 2


def read_request(conn: socket.socket) -> tuple[list[bytes], bytes]:
    """(head lines, body as sent); answers ``Expect: 100-continue`` itself."""
    buf = bytearray()
    end = read_until(conn, buf, b"\r\n\r\n")
    lines = bytes(buf[:end - 4]).split(b"\r\n")
    rest = bytearray(buf[end:])
    headers = {ln.split(b":", 1)[0].strip().lower(): ln.split(b":", 1)[1].strip()
               for ln in lines[1:] if b":" in ln}
    if headers.get(b"expect", b"").lower() == b"100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = read_chunked(conn, rest)
    else:
        size = int(headers.get(b"content-length", b"0"))
        read_exact(conn, rest, size)
        body = bytes(rest[:size])
    kept = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower()
            not in (b"connection", b"expect", b"keep-alive")]
    return kept + [b"Connection: close"], body


def forward(upstream: tuple[str, int], head: list[bytes], body: bytes) -> bytes:
    """The upstream's whole response (it closes after one request: Connection: close)."""
    with socket.create_connection(upstream, timeout=60) as up:
        up.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        out = bytearray()
        while True:
            chunk = up.recv(65536)
            if not chunk:
                return bytes(out)
            out += chunk


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def handle(conn: socket.socket, args, counters: Counters) -> None:
    try:
        head, body = read_request(conn)
        n = counters.next_request()
        if args.fail_all or (args.slowdown_every and n % args.slowdown_every == 0):
            conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN) + SLOWDOWN)
            return
        response = forward(args.upstream, head, body)
        split = response.find(b"\r\n\r\n") + 4
        payload = len(response) - split
        ranged = any(ln.lower().startswith(b"range:") for ln in head)
        if (args.reset_every and payload >= args.reset_min_bytes
                and (args.reset_ranged or not ranged)
                and counters.next_body() % args.reset_every == 0):
            conn.sendall(response[:split + payload // 2])
            reset(conn)
            return
        conn.sendall(response)
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="host:port of the S3 server")
    ap.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    ap.add_argument("--slowdown-every", type=int, default=4)
    ap.add_argument("--reset-every", type=int, default=5)
    ap.add_argument("--reset-min-bytes", type=int, default=2048)
    ap.add_argument("--reset-ranged", action="store_true", help="cut Range responses too")
    ap.add_argument("--fail-all", action="store_true")
    args = ap.parse_args(argv)
    host, port = args.upstream.rsplit(":", 1)
    args.upstream = (host, int(port))
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(128)
    print(f"PORT {server.getsockname()[1]}", flush=True)
    counters = Counters()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn, args, counters), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
