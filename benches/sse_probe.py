#!/usr/bin/env python3
"""SSE timing and open-stream probes for benches/load.sh (stdlib only).

  sse_probe.py timing URL N        N sequential streams; prints JSON with TTFT and
                                   inter-event gap percentiles (ms)
  sse_probe.py hold URL N SECONDS  opens N concurrent streams, waits until all have their
                                   first event, prints "ready", holds them SECONDS, exits

Requests are raw HTTP/1.1 over sockets so that the client adds as little as possible.
"""
import asyncio
import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit

# PROBE_MODEL: the model to name (a gateway that routes by model, e.g. TensorZero).
BODY = json.dumps({"model": os.environ.get("PROBE_MODEL", "gpt-4o-mini"), "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def request(url, extra=""):
    u = urlsplit(url)
    head = (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer sk-app\r\n{extra}Content-Length: {len(BODY)}\r\n\r\n")
    return u.hostname, u.port, head.encode() + BODY


def pct(values, p):
    if not values:
        return float("nan")  # e.g. every event of every stream came in one read
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def timing(url, n):
    host, port, req = request(url, "x-mock-chunks: 10\r\nx-mock-interval-ms: 5\r\nConnection: close\r\n")
    ttft, gaps, total_events = [], [], 0
    for _ in range(n):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(req)
        buf, first, last, events = b"", None, None, 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            now = time.perf_counter()
            new_events = chunk.count(b"data: {")
            if new_events:
                if first is None:
                    first = now
                    ttft.append((now - t0) * 1000)
                else:
                    gaps.append((now - last) * 1000)
                last = now
                events += new_events
            buf += chunk
            if b"data: [DONE]" in buf:
                break
        s.close()
        total_events += events
        if first is None:
            sys.exit(f"no event from {url}")
    out = {"n": n, "events_per_stream": total_events / n, "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
           "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99)}
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


async def hold(url, n, seconds):
    host, port, req = request(url, "x-mock-chunks: 60\r\nx-mock-interval-ms: 1000\r\n")
    ready = asyncio.Event()
    started = 0
    writers = []

    async def one():
        nonlocal started
        r, w = await asyncio.open_connection(host, port)
        writers.append(w)
        w.write(req)
        await w.drain()
        buf = b""
        while b"data: {" not in buf:
            chunk = await r.read(65536)
            if not chunk:
                raise SystemExit("a stream ended early")
            buf += chunk
        started += 1
        if started == n:
            ready.set()
        while await r.read(65536):
            pass

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one()))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(ready.wait(), 120)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "timing":
        timing(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 5 and sys.argv[1] == "hold":
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, int(sys.argv[3]) + 100)), hard))
        asyncio.run(hold(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
