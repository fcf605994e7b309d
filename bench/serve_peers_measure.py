"""Measurement processes for bench_serve_peers (each run alone via bench.common.run_isolated).

    python -m bench.serve_peers_measure load --url U --api API --texts F --clients N --seconds T
    python -m bench.serve_peers_measure rate --url U --api API --texts F --rate R --seconds T
    python -m bench.serve_peers_measure answers --url U --api API --texts F
    python -m bench.serve_peers_measure ceiling --bundle B --texts F --cell JSON --seconds T

API is how a server is asked: `tuneline` (POST /v1/predict {"texts"}), `mlflow` (POST
/invocations {"dataframe_split"}) or `peer` (POST /predict {"texts"}). Every server answers
{"predictions": [one per text, with a "label"]}. Each mode prints one JSON line.

`load` is closed-loop, one text per request, on the same minimal keep-alive client as
bench.serve_measure (a heavier client library would eat the cores being measured); every
request body is encoded before the clock starts.

`rate` is open-loop: requests arrive at `--rate` a second on average (Poisson arrivals from a
fixed seed, so every server gets the same schedule), each on an idle keep-alive connection
or a new one, whether or not earlier answers came back. Latency runs from a request's
scheduled arrival, so a server that falls behind is charged for the queue it builds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from pathlib import Path

from orjson import loads

from bench.serve_measure import Conn, percentiles

APIS = {
    "tuneline": ("/v1/predict", lambda texts: {"texts": texts}),
    "mlflow": ("/invocations",
               lambda texts: {"dataframe_split": {"columns": ["text"],
                                                  "data": [[t] for t in texts]}}),
    "peer": ("/predict", lambda texts: {"texts": texts}),
}


def request_bytes(conn: Conn, api: str, texts: list[str]) -> bytes:
    path, body_of = APIS[api]
    return conn.request(texts, path, body_of(texts))


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
            status, _, body = await conn.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"].append(repr(exc))
            await conn.close()
            conn = Conn(url)
            await conn.open()
            continue
        out["latency_ms"].append((time.perf_counter() - t0) * 1e3)
        if status != 200:
            out["errors"].append(f"HTTP {status}: {body[:200]!r}")
            continue
        out["texts"] += len(loads(body)["predictions"])
    await conn.close()


async def measure_load(url: str, api: str, texts: list[str], clients: int,
                       seconds: float) -> dict:
    """`clients` connections, each posting one text and waiting for the answer, for `seconds`."""
    conn = Conn(url)
    requests = [request_bytes(conn, api, [t]) for t in texts]
    out = {"latency_ms": [], "errors": [], "texts": 0}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(url, requests, t0 + seconds, k * 97, out)
                           for k in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    errors = out["errors"]
    return {"clients": clients, "seconds": elapsed,
            "client_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
            "requests": len(out["latency_ms"]), "failed_requests": len(errors),
            "error_examples": sorted(set(errors))[:5], "texts": out["texts"],
            "texts_per_s": out["texts"] / elapsed, "latency": percentiles(out["latency_ms"])}


async def measure_rate(url: str, api: str, texts: list[str], rate: float, seconds: float,
                       seed: int = 0, drain_s: float = 30.0) -> dict:
    """Poisson arrivals at `rate` a second for `seconds`; latency from scheduled arrival."""
    proto = Conn(url)
    requests = [request_bytes(proto, api, [t]) for t in texts]
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    idle: list[Conn] = []
    out = {"latency_ms": [], "errors": [], "texts": 0, "connections": 0}

    async def one(i: int, due: float) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = Conn(url)
                await conn.open()
                out["connections"] += 1
            status, _, body = await conn.exchange(requests[i % len(requests)])
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"].append(repr(exc))
            if conn is not None:
                await conn.close()
            return
        out["latency_ms"].append((time.perf_counter() - due) * 1e3)
        idle.append(conn)
        if status != 200:
            out["errors"].append(f"HTTP {status}: {body[:200]!r}")
            return
        out["texts"] += len(loads(body)["predictions"])

    t0 = time.perf_counter()
    tasks = []
    for i, at in enumerate(arrivals):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, t0 + at)))
    done, late = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in late:
        task.cancel()
    elapsed = time.perf_counter() - t0
    for conn in idle:
        await conn.close()
    errors = out["errors"] + [f"no answer {drain_s:g} s after the last arrival"] * len(late)
    return {"rate": rate, "seconds": seconds, "requests": len(arrivals),
            "answered": len(out["latency_ms"]), "failed_requests": len(errors),
            "error_examples": sorted(set(errors))[:5], "texts": out["texts"],
            "texts_per_s": out["texts"] / elapsed, "connections": out["connections"],
            "latency": percentiles(out["latency_ms"])}


async def answers(url: str, api: str, texts: list[str]) -> dict:
    """The label of each text, one request a text, sequentially."""
    conn = Conn(url)
    await conn.open()
    labels, failed = [], []
    for i, text in enumerate(texts):
        status, _, body = await conn.exchange(request_bytes(conn, api, [text]))
        if status == 200:
            labels.append(loads(body)["predictions"][0]["label"])
        else:
            labels.append(None)
            failed.append(f"text {i} ({len(text)} chars): HTTP {status} {body[:200]!r}")
    await conn.close()
    return {"labels": labels, "failed": failed}


def ceiling(bundle: str, texts: list[str], cell: dict, seconds: float) -> dict:
    """One in-process cell (bench.serve_ceiling_measure) timed for `seconds`, with peak RSS."""
    from bench.common import peak_rss_mb
    from bench.serve_ceiling_measure import one_cell

    return {**cell, **one_cell(bundle, texts, cell, seconds), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["load", "rate", "answers", "ceiling"])
    parser.add_argument("--texts", required=True, help="JSON list of texts")
    parser.add_argument("--url")
    parser.add_argument("--api", choices=sorted(APIS))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=15, help="rate: requests a second")
    parser.add_argument("--bundle")
    parser.add_argument("--cell", help="ceiling: JSON of one grid cell")
    args = parser.parse_args()
    texts = json.loads(Path(args.texts).read_text())
    if args.mode == "load":
        result = asyncio.run(measure_load(args.url, args.api, texts, args.clients, args.seconds))
    elif args.mode == "rate":
        result = asyncio.run(measure_rate(args.url, args.api, texts, args.rate, args.seconds))
    elif args.mode == "answers":
        result = asyncio.run(answers(args.url, args.api, texts))
    else:
        result = ceiling(args.bundle, texts, json.loads(args.cell), args.seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
