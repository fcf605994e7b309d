"""Measurement processes for bench_serve (each run alone via bench.common.run_isolated).

    python -m bench.serve_measure raw --bundle B --texts F [--repeats R] [--threads T]
    python -m bench.serve_measure latency --url U --texts F [--repeats R]
    python -m bench.serve_measure load --url U --texts F --clients N --seconds T [--per-request K]
    python -m bench.serve_measure open --url U --texts F --phases RATE:SECONDS,... [--per-request K]
        [--client-timeout S] [--max-connections C]

Each prints one JSON line. The HTTP client is a minimal keep-alive HTTP/1.1 client on
asyncio streams: on a 2-core box shared with the server, a heavier client library would
eat the CPU the server is being measured on.

`load` is closed-loop (each client waits for its answer before sending again, so the
offered load adapts to the server); `open` is open-loop: requests arrive at a fixed rate
whatever the server does, like many independent users, each giving up after
--client-timeout. Only an open-loop client can offer more than the server can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from orjson import loads


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    arr = np.asarray(samples_ms)
    return {"n": len(samples_ms), "p50_ms": float(np.percentile(arr, 50)),
            "p95_ms": float(np.percentile(arr, 95)), "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": float(arr.max())}


def load_texts(path: str) -> list[str]:
    return json.loads(Path(path).read_text())


def measure_raw(bundle: str, texts: list[str], repeats: int, threads: int,
                spinning: bool) -> dict:
    """In-process ONNX Runtime int8: batch-1 session.run alone and with tokenize+softmax.

    The session is configured as the server configures it (threads, spinning)."""
    from components.release.predictor import OnnxClassifier

    config = {} if spinning else {"session.intra_op.allow_spinning": "0"}
    clf = OnnxClassifier(bundle, threads=threads, session_config=config)
    feeds = [clf.encode([texts[i % len(texts)]]) for i in range(repeats)]
    for f in feeds[:5]:
        clf.session.run(["logits"], f)
    run_ms, predict_ms = [], []
    for f in feeds:
        t0 = time.perf_counter()
        clf.session.run(["logits"], f)
        run_ms.append((time.perf_counter() - t0) * 1e3)
    for i in range(repeats):
        t0 = time.perf_counter()
        clf.predict([texts[i % len(texts)]])
        predict_ms.append((time.perf_counter() - t0) * 1e3)
    batch = [texts[i % len(texts)] for i in range(32)]
    b32 = []
    for _ in range(max(5, repeats // 20)):
        t0 = time.perf_counter()
        clf.predict(batch, batch_size=32)
        b32.append(time.perf_counter() - t0)
    seq = int(feeds[0]["input_ids"].shape[1])
    return {"session_run_b1": percentiles(run_ms), "predict_b1": percentiles(predict_ms),
            "b32_texts_per_s": 32 / statistics.median(b32), "seq_len_b1_example": seq}


class Conn:
    """One keep-alive HTTP/1.1 connection posting JSON to /v1/predict."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def request(self, texts: list[str], path: str = "/v1/predict",
                payload: dict | None = None) -> bytes:
        """The bytes of one request posting `payload` (default: tuneline's predict body for
        `texts`) to `path`; built once per distinct body by callers."""
        body = json.dumps({"texts": texts} if payload is None else payload).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def post(self, texts: list[str]) -> tuple[int, dict]:
        return await self.send(self.request(texts))

    async def send(self, request: bytes) -> tuple[int, dict]:
        status, _, body = await self.exchange(request)
        return status, loads(body)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request; return its status, headers (lower-case names) and body."""
        self.writer.write(request)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure_latency(url: str, texts: list[str], repeats: int) -> dict:
    """Sequential batch-1 requests on one connection: no queueing, pure per-request cost."""
    conn = Conn(url)
    await conn.open()
    for i in range(10):
        await conn.post([texts[i % len(texts)]])
    samples, failures = [], 0
    for i in range(repeats):
        t0 = time.perf_counter()
        status, _ = await conn.post([texts[i % len(texts)]])
        samples.append((time.perf_counter() - t0) * 1e3)
        failures += status != 200
    await conn.close()
    return {"latency_b1": percentiles(samples), "failures": failures}


async def _client(url: str, requests: list[bytes], stop_at: float, offset: int,
                  out: dict) -> None:
    conn = Conn(url)
    await conn.open()
    i = offset
    while time.perf_counter() < stop_at:
        request = requests[i % len(requests)]
        i += 1
        t0 = time.perf_counter()
        try:
            status, body = await conn.send(request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"].append(repr(exc))
            await conn.close()
            conn = Conn(url)
            await conn.open()
            continue
        done = time.perf_counter()
        out["latency_ms"].append((done - t0) * 1e3)
        if status != 200:
            out["errors"].append(f"HTTP {status}: {body}")
            continue
        out["texts"] += len(body["predictions"])
        version = body["model_version"]
        out["versions"][version] = out["versions"].get(version, 0) + 1
        out["first_seen"].setdefault(version, done)
    await conn.close()


async def measure_load(url: str, texts: list[str], clients: int, seconds: float,
                       per_request: int) -> dict:
    """`clients` concurrent connections posting `per_request` texts each for `seconds`."""
    # Every request body is encoded before the clock starts: the client shares the server's
    # two cores, and its CPU is not what is being measured.
    conn = Conn(url)
    requests = [conn.request([texts[(i + j) % len(texts)] for j in range(per_request)])
                for i in range(0, len(texts) * per_request, per_request)]
    out = {"latency_ms": [], "errors": [], "texts": 0, "versions": {}, "first_seen": {}}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(_client(url, requests, stop_at, k * 97, out)
                           for k in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"clients": clients, "client_cpu_s": client_cpu, "seconds": elapsed,
            "per_request": per_request,
            "requests": len(out["latency_ms"]), "failed_requests": len(out["errors"]),
            "error_examples": out["errors"][:5], "texts": out["texts"],
            "texts_per_s": out["texts"] / elapsed, "latency": percentiles(out["latency_ms"]),
            "versions": out["versions"],
            "first_seen_s": {v: t - t0 for v, t in out["first_seen"].items()}}


class _Pool:
    """Keep-alive connections for the open-loop client: reuse an idle one, else open one,
    up to `cap` open at once (past it the request is dropped at the client). A connection
    idle longer than `max_idle_s` is closed rather than reused: the server may have closed
    it already (serve.timeout_keep_alive_s), as HTTP client pools assume too."""

    def __init__(self, url: str, cap: int, max_idle_s: float = 3.0) -> None:
        self.url, self.cap, self.max_idle_s = url, cap, max_idle_s
        self.idle: list[tuple[Conn, float]] = []
        self.open = 0

    def put(self, conn: Conn) -> None:
        self.idle.append((conn, time.perf_counter()))

    async def get(self) -> Conn | None:
        while self.idle and time.perf_counter() - self.idle[0][1] > self.max_idle_s:
            await self.drop(self.idle.pop(0)[0])
        if self.idle:
            return self.idle.pop()[0]
        if self.open >= self.cap:
            return None
        self.open += 1
        conn = Conn(self.url)
        try:
            await conn.open()
        except OSError:
            self.open -= 1
            raise
        return conn

    async def drop(self, conn: Conn) -> None:
        self.open -= 1
        await conn.close()


async def _open_request(pool: _Pool, request: bytes, timeout: float, record: dict) -> None:
    t0 = time.perf_counter()
    try:
        conn = await pool.get()
    except OSError as exc:
        record.update(outcome="connect_error", error=repr(exc))
        return
    if conn is None:
        record["outcome"] = "no_connection"
        return
    try:
        status, headers, body = await asyncio.wait_for(conn.exchange(request), timeout)
    except TimeoutError:  # the client gives up and hangs up, as a real one would
        record["outcome"] = "timeout"
        await pool.drop(conn)
        return
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        record.update(outcome="connection_lost", error=repr(exc))
        await pool.drop(conn)
        return
    record.update(outcome=str(status), latency_ms=(time.perf_counter() - t0) * 1e3,
                  retry_after=headers.get("retry-after"))
    if status == 200:
        record["texts"] = len(loads(body)["predictions"])
    if headers.get("connection", "").lower() == "close":
        await pool.drop(conn)
    else:
        pool.put(conn)


def _summarize_open(records: list[dict], start: float, seconds: float) -> dict:
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    ok = [r["latency_ms"] for r in records if r["outcome"] == "200"]
    shed = [r["latency_ms"] for r in records if r["outcome"] in ("503", "504")]
    return {"start_s": start, "seconds": seconds, "requests": len(records),
            "outcomes": outcomes,
            "ok_texts_per_s": sum(r.get("texts", 0) for r in records) / seconds,
            "ok_latency": percentiles(ok), "refused_latency": percentiles(shed),
            "retry_after": sorted({r["retry_after"] for r in records if r.get("retry_after")})}


async def measure_open(url: str, texts: list[str], phases: list[tuple[float, float]],
                       per_request: int, timeout: float, max_connections: int) -> dict:
    """Open-loop phases of (requests/s, seconds), back to back; per phase and per second:
    outcomes (HTTP status, timeout, no_connection, ...) and latencies."""
    conn = Conn(url)
    requests = [conn.request([texts[(i + j) % len(texts)] for j in range(per_request)])
                for i in range(0, len(texts) * per_request, per_request)]
    pool = _Pool(url, max_connections)
    records, tasks = [], []
    t0, wall0 = time.perf_counter(), time.time()
    at, i = 0.0, 0
    for phase, (rate, seconds) in enumerate(phases):
        end = at + seconds
        while at < end:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            record = {"phase": phase, "at_s": at}
            records.append(record)
            tasks.append(asyncio.create_task(_open_request(
                pool, requests[i % len(requests)], timeout, record)))
            i += 1
            at += 1.0 / rate
        at = end
    await asyncio.gather(*tasks)
    for c, _ in pool.idle:
        await c.close()
    out, start = [], 0.0
    for phase, (rate, seconds) in enumerate(phases):
        summary = _summarize_open([r for r in records if r["phase"] == phase], start, seconds)
        out.append({"rate_per_s": rate, **summary})
        start += seconds
    timeline = [_summarize_open([r for r in records if int(r["at_s"]) == s], s, 1.0)
                for s in range(int(start))]
    return {"started_at_unix": wall0, "per_request": per_request, "client_timeout_s": timeout,
            "max_connections": max_connections, "phases": out, "per_second": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["raw", "latency", "load", "open"])
    parser.add_argument("--texts", required=True, help="JSON list of texts")
    parser.add_argument("--bundle")
    parser.add_argument("--url")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", action="store_true", help="ORT workers busy-wait")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--phases", help="open: RATE:SECONDS,... (requests/s for seconds)")
    parser.add_argument("--client-timeout", type=float, default=5.0,
                        help="open: seconds before a client gives up and hangs up")
    parser.add_argument("--max-connections", type=int, default=1000,
                        help="open: connections open at once; past it requests are dropped")
    args = parser.parse_args()
    texts = load_texts(args.texts)
    if args.mode == "raw":
        result = measure_raw(args.bundle, texts, args.repeats, args.threads, args.spinning)
    elif args.mode == "latency":
        result = asyncio.run(measure_latency(args.url, texts, args.repeats))
    elif args.mode == "load":
        result = asyncio.run(measure_load(args.url, texts, args.clients, args.seconds,
                                          args.per_request))
    else:
        phases = [(float(r), float(s)) for r, s in
                  (p.split(":") for p in args.phases.split(","))]
        result = asyncio.run(measure_open(args.url, texts, phases, args.per_request,
                                          args.client_timeout, args.max_connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
