"""One-connection PUT latency against a Doppel node from a small stdlib Python client.

The same kind of client as the RESP one in ../shared/peers/redis_repl.sh (raw socket,
keep-alive, TCP_NODELAY, perf_counter_ns around each request), so a reader can tell how
much of a figure is the client: compare with `sync_clients` (Rust) on the same database.

    python3 server/benches/sync_python.py HOST:PORT TOKEN PATH [COMMITS]

PATH is a records path, e.g. /v1/tenants/default/databases/s/files/bench/records.
Prints p50 / p99 / p99.9 in microseconds.
"""
import math
import socket
import sys
import time


def main():
    addr, token, path = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b'{"data":"' + b"v" * 100 + b'"}'
    head = (
        "Host: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n" % (addr, token, len(body))
    ).encode()
    buf = bytearray()

    def answer():
        nonlocal buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the node closed the connection")
            buf += chunk
        status = int(buf[9:12])
        length = 0
        for line in bytes(buf[:end]).split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(buf) < end + 4 + length:
            buf += s.recv(65536)
        del buf[: end + 4 + length]
        if status != 200:
            raise RuntimeError("status %d" % status)

    samples = []
    for i in range(n + 500):
        req = b"PUT %s/p%08d HTTP/1.1\r\n" % (path.encode(), i) + head + body
        t0 = time.perf_counter_ns()
        s.sendall(req)
        answer()
        if i >= 500:
            samples.append(time.perf_counter_ns() - t0)
    samples.sort()

    def pct(p):
        return samples[max(0, math.ceil(p / 100.0 * len(samples)) - 1)] / 1000.0

    print("python PUT, one connection: %d commits: p50 %.1f us, p99 %.1f us, p99.9 %.1f us"
          % (n, pct(50), pct(99), pct(99.9)))


if __name__ == "__main__":
    main()
