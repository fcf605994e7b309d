"""In-process ceiling of ONNX Runtime on the demo texts: the number HTTP serving is held to.

    python -m bench.serve_ceiling_measure --bundle B --texts F [--max-batch 32] [--seconds 1.5]
    python -m bench.serve_ceiling_measure --bundle B --texts F \
        --cell '{"threads": 1, ...}' --seconds 6

Runs in its own process (bench_serve starts it before the server) and prints one JSON line:

- `grid`: texts/s of `session.run` alone on pre-tokenized feeds, for every combination of
  batch size (up to serve.max_batch), intra-op threads x concurrent runs on one session
  (1x2, 2x1, 2x2 on 2 cores), and padding: `batch` pads each batch of consecutive texts
  to its longest, `sorted` cuts the texts sorted by length first (the least padding any
  server could reach). Spinning on and off is tried on the best few. Each cell is the
  median of `--repeats` timed passes of at least `--seconds`.
- `ceiling`: the best cell: the runtime's own best on these texts and cores.
- `pipeline`: the server's inference function in process (tokenize, length buckets,
  ONNX Runtime, softmax) at the server's threads/workers, by batch size: what is left
  once HTTP is taken away.
- `tokenize_us_per_text`: `tokenizers` alone.

With --cell, only that cell is timed (bench_serve alternates it with HTTP runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

LAYOUTS = ((1, 2), (2, 1), (2, 2))  # (intra-op threads, concurrent runs)
BATCHES = (1, 4, 8, 16, 24, 32)


def session_for(bundle: str, threads: int, spinning: bool):
    from components.release.predictor import OnnxClassifier

    config = {} if spinning else {"session.intra_op.allow_spinning": "0"}
    return OnnxClassifier(bundle, threads=threads, session_config=config)


def feeds_for(clf, texts: list[str], batch: int, padding: str) -> list[dict[str, np.ndarray]]:
    """Pre-tokenized batches; `sorted` orders the texts by token count first."""
    lengths = clf.encode(texts)["attention_mask"].sum(axis=1).tolist()
    order = sorted(range(len(texts)), key=lengths.__getitem__) if padding == "sorted" \
        else list(range(len(texts)))
    ordered = [texts[i] for i in order]
    return [clf.encode(ordered[i: i + batch]) for i in range(0, len(ordered), batch)]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_pass(work: Callable[[int], int], n_items: int, streams: int,
               seconds: float) -> tuple[float, float]:
    """(items/s, process CPU microseconds per item) of `streams` threads calling work(i)
    over items 0.. (cycled) for >= seconds."""
    counter = itertools.count()
    done = [0] * streams
    stop_at = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop_at:
            done[k] += work(next(counter) % n_items)

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = sum(done)
    return items / (time.perf_counter() - t0), (cpu_seconds() - cpu0) * 1e6 / items


def measure_cell(clf, feeds, streams: int, seconds: float, repeats: int) -> dict:
    """Median texts/s (and CPU us per text) over `repeats` timed passes of `feeds`."""
    def work(i: int) -> int:
        clf.session.run(["logits"], feeds[i])
        return len(feeds[i]["input_ids"])

    for i in range(min(3, len(feeds))):  # warm-up: the first runs allocate
        work(i)
    passes = sorted(timed_pass(work, len(feeds), streams, seconds) for _ in range(repeats))
    rate, cpu_us = passes[len(passes) // 2]
    return {"texts_per_s": rate, "cpu_us_per_text": cpu_us}


def ort_grid(bundle: str, texts: list[str], max_batch: int, seconds: float,
             repeats: int) -> list[dict]:
    rows = []
    batches = [b for b in BATCHES if b <= max_batch]
    for threads, streams in LAYOUTS:
        clf = session_for(bundle, threads, spinning=False)
        for batch, padding in itertools.product(batches, ("batch", "sorted")):
            feeds = feeds_for(clf, texts, batch, padding)
            rows.append({"threads": threads, "streams": streams, "batch": batch,
                         "padding": padding, "spinning": False,
                         **measure_cell(clf, feeds, streams, seconds, repeats)})
    for best in sorted(rows, key=lambda r: -r["texts_per_s"])[:3]:
        clf = session_for(bundle, best["threads"], spinning=True)
        feeds = feeds_for(clf, texts, best["batch"], best["padding"])
        rows.append({**best, "spinning": True,
                     **measure_cell(clf, feeds, best["streams"], seconds, repeats)})
    return rows


def pipeline(bundle: str, texts: list[str], threads: int, workers: int, call_cost: int,
             max_batch: int, spinning: bool, seconds: float, repeats: int) -> list[dict]:
    """The server's per-batch inference (components.release.inference) on consecutive texts."""
    from components.release.inference import BucketedClassifier

    clf = BucketedClassifier(session_for(bundle, threads, spinning), call_cost, max_rows=max_batch)
    out = []
    for batch in (b for b in BATCHES if b <= max_batch):
        chunks = [texts[i: i + batch] for i in range(0, len(texts) - batch + 1, batch)]

        def work(i: int, chunks=chunks) -> int:
            clf.probabilities(chunks[i])
            return len(chunks[i])

        work(0)
        passes = sorted(timed_pass(work, len(chunks), workers, seconds) for _ in range(repeats))
        rate, cpu_us = passes[len(passes) // 2]
        out.append({"batch": batch, "texts_per_s": rate, "cpu_us_per_text": cpu_us})
    return out


def tokenize_us(bundle: str, texts: list[str]) -> float:
    clf = session_for(bundle, 1, False)
    t0 = time.perf_counter()
    for _ in range(5):
        for i in range(0, len(texts), 32):
            clf.tokenizer.encode_batch(texts[i: i + 32])
    return (time.perf_counter() - t0) / (5 * len(texts)) * 1e6


def one_cell(bundle: str, texts: list[str], cell: dict, seconds: float) -> dict:
    """texts/s of one grid cell, timed once for `seconds` (the interleaved rounds)."""
    clf = session_for(bundle, cell["threads"], cell["spinning"])
    feeds = feeds_for(clf, texts, cell["batch"], cell["padding"])
    return measure_cell(clf, feeds, cell["streams"], seconds, repeats=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--texts", required=True, help="JSON list of texts")
    parser.add_argument("--cell", help="JSON of one grid cell: time only it, for --seconds")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="server's serve.threads")
    parser.add_argument("--workers", type=int, default=2, help="server's serve.workers")
    parser.add_argument("--call-cost", type=int, default=64)
    parser.add_argument("--spinning", action="store_true", help="server's serve.ort_spinning")
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = json.loads(Path(args.texts).read_text())
    if args.cell:
        cell = json.loads(args.cell)
        print(json.dumps({**cell, **one_cell(args.bundle, texts, cell, args.seconds)}))
        return
    grid = ort_grid(args.bundle, texts, args.max_batch, args.seconds, args.repeats)
    best = max(grid, key=lambda r: r["texts_per_s"])
    best_unsorted = max((r for r in grid if r["padding"] == "batch"),
                        key=lambda r: r["texts_per_s"])
    print(json.dumps({
        "ceiling": best, "ceiling_without_global_sort": best_unsorted, "grid": grid,
        "pipeline": {"threads": args.threads, "workers": args.workers,
                     "rows": pipeline(args.bundle, texts, args.threads, args.workers,
                                      args.call_cost, args.max_batch, args.spinning,
                                      args.seconds, args.repeats)},
        "tokenize_us_per_text": tokenize_us(args.bundle, texts)}))


if __name__ == "__main__":
    main()
