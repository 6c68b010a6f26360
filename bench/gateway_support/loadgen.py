"""HTTP/1.1 keep-alive load generator for bench/gateway.py, run as its own process.

It prints one JSON object as its last line of output.

    rate:   open loop; requests are scheduled at fixed intervals and each latency is measured
            from its scheduled send time (no coordinated omission: a slow response delays no
            later request's clock); the first --warmup seconds are left out of the figures.
    closed: --connections connections, each sends its next request as soon as the last one
            returns; prints "started <time.monotonic()>" first, then per-bucket success counts
            and every failed request (connection error, timeout or non-2xx).

    python bench/gateway_support/loadgen.py rate --url http://127.0.0.1:8080/x --rate 1000 --duration 10
    python bench/gateway_support/loadgen.py closed --url http://127.0.0.1:8080/x --connections 16 --duration 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from urllib.parse import urlsplit

import uvloop

BODY = b'{"prompt":"a cat","steps":1}'


class Connection:
    """One keep-alive connection; `request` raises on any transport or protocol error."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, payload: bytes) -> tuple[int, bool]:
        """Send one request; return its status and whether the connection can be reused."""
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"content-length" in headers:
            await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            await self._read_chunked()
        elif status not in (204, 304):
            await self.reader.read()  # delimited by the end of the connection
            return status, False
        return status, headers.get(b"connection") != b"close"

    async def _read_chunked(self) -> None:
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await self.reader.readexactly(size + 2)
            if size == 0:
                return

    def close(self) -> None:
        self.writer.close()


def build_request(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    return host, port, head.encode() + BODY


def percentiles_ms(samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)

    def at(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3) if ordered else None

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)}


class Pool:
    """At most `limit` connections, opened on demand; the most recently used is reused first."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.slots: asyncio.LifoQueue[Connection | None] = asyncio.LifoQueue()
        for _ in range(limit):
            self.slots.put_nowait(None)

    async def acquire(self) -> Connection:
        slot = await self.slots.get()
        if slot is not None:
            return slot
        try:
            return await Connection.open(self.host, self.port)
        except BaseException:
            self.slots.put_nowait(None)
            raise

    def release(self, conn: Connection, reusable: bool) -> None:
        if not reusable:
            conn.close()
        self.slots.put_nowait(conn if reusable else None)


async def run_rate(url: str, rate: float, duration: float, warmup: float, limit: int, timeout: float) -> dict:
    host, port, payload = build_request(url)
    pool = Pool(host, port, limit)
    latencies: list[float] = []
    lateness: list[float] = []  # the generator's own: from the scheduled time to the request's task starting
    last_done = 0.0
    errors: Counter[str] = Counter()
    total, measured_from = int((warmup + duration) * rate), int(warmup * rate)

    async def one(index: int, scheduled: float) -> None:
        nonlocal last_done
        began = time.monotonic()
        conn: Connection | None = None
        try:
            conn = await pool.acquire()
            status, reusable = await asyncio.wait_for(conn.request(payload), timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            if conn is not None:
                pool.release(conn, False)
            if index >= measured_from:
                errors[type(exc).__name__] += 1
            return
        pool.release(conn, reusable)
        if index < measured_from:
            return
        if 200 <= status < 300:
            last_done = time.monotonic()
            latencies.append(last_done - scheduled)
            lateness.append(began - scheduled)
        else:
            errors[f"http {status}"] += 1

    tasks: list[asyncio.Task] = []
    start = time.monotonic() + 0.05
    measured_start = start + warmup
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    return {
        "mode": "rate",
        "rate": rate,
        "duration_s": duration,
        "scheduled": total - measured_from,
        "ok": len(latencies),
        "ok_per_s": round(len(latencies) / max(duration, last_done - measured_start), 1),
        "errors": dict(errors),
        "latency_ms": percentiles_ms(latencies),
        "generator_lateness_ms": percentiles_ms(lateness),
    }


async def run_closed(url: str, connections: int, duration: float, bucket_s: float, timeout: float) -> dict:
    host, port, payload = build_request(url)
    buckets = [0] * round(duration / bucket_s)
    bucket_max = [0.0] * len(buckets)
    failures: list[tuple[float, str]] = []
    start = time.monotonic()
    end = start + duration
    print(f"started {start}", flush=True)

    async def client() -> None:
        conn: Connection | None = None
        while (now := time.monotonic()) < end:
            try:
                if conn is None:
                    conn = await asyncio.wait_for(Connection.open(host, port), timeout)
                status, reusable = await asyncio.wait_for(conn.request(payload), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
                failures.append((round(now - start, 4), type(exc).__name__))
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            done = time.monotonic()
            if done >= end:
                break
            if 200 <= status < 300:
                index = int((done - start) / bucket_s)
                buckets[index] += 1
                bucket_max[index] = max(bucket_max[index], done - now)
            else:
                failures.append((round(now - start, 4), f"http {status}"))
            if not reusable:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return {
        "mode": "closed",
        "connections": connections,
        "duration_s": duration,
        "bucket_s": bucket_s,
        "start": start,
        "buckets": buckets,
        "bucket_max_latency_ms": [round(x * 1000, 3) for x in bucket_max],
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    rate = modes.add_parser("rate")
    rate.add_argument("--rate", type=float, default=1000.0)
    rate.add_argument("--warmup", type=float, default=1.0)
    rate.add_argument("--max-connections", type=int, default=256)
    closed = modes.add_parser("closed")
    closed.add_argument("--connections", type=int, default=16)
    closed.add_argument("--bucket", type=float, default=0.1)
    for sub in (rate, closed):
        sub.add_argument("--url", required=True)
        sub.add_argument("--duration", type=float, default=10.0)
        sub.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.mode == "rate":
        work = run_rate(args.url, args.rate, args.duration, args.warmup, args.max_connections, args.timeout)
    else:
        work = run_closed(args.url, args.connections, args.duration, args.bucket, args.timeout)
    print(json.dumps(uvloop.run(work)), flush=True)


if __name__ == "__main__":
    main()
