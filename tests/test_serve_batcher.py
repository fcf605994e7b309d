"""MicroBatcher: batch limits, the wait deadline, no wait for a lone request, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deploy.serve.batcher import DeadlineExceeded, MicroBatcher, QueueFull


class Recorder:
    """An `infer` that records each batch and answers with the text lengths."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def __call__(self, texts: list[str]):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        return f"batch{len(self.batches)}", [len(t) for t in texts]


def run(coro):
    return asyncio.run(coro)


async def with_batcher(infer, max_batch, max_wait_ms, body):
    batcher = MicroBatcher(infer, max_batch, max_wait_ms)
    await batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_a_batch_up_to_max_batch():
    rec = Recorder(delay_s=0.05)  # while one batch runs, the rest queue up

    async def body(b):
        requests = [[f"t{i}"] * (1 + i % 3) for i in range(12)]  # 24 texts in all
        return requests, await asyncio.gather(*(b.submit(r) for r in requests))

    requests, replies = run(with_batcher(rec, 5, 50, body))
    assert all(len(b) <= 5 for b in rec.batches)
    assert sum(len(b) for b in rec.batches) == 24
    assert len(rec.batches) < 12, "requests should have been grouped"
    for req, (tag, results) in zip(requests, replies, strict=True):
        assert results == [len(t) for t in req]  # each request gets its own results back
        assert tag.startswith("batch")
    assert rec.threads == {"tuneline-infer_0"}  # inference stays off the event loop


def test_a_request_is_never_split_and_an_oversized_one_runs_alone():
    rec = Recorder(delay_s=0.02)

    async def body(b):
        return await asyncio.gather(b.submit(["a"] * 3), b.submit(["b"] * 3),
                                    b.submit(["c"] * 9))

    replies = run(with_batcher(rec, 4, 10, body))
    assert sorted(len(b) for b in rec.batches) == [3, 3, 9]
    assert [len(r) for _, r in replies] == [3, 3, 9]


def test_lone_request_does_not_wait_but_one_with_company_holds_the_batch_open():
    async def lone(b):
        t0 = time.perf_counter()
        await b.submit(["x"])
        return time.perf_counter() - t0

    assert run(with_batcher(Recorder(), 8, 500, lone)) < 0.25

    rec = Recorder()

    async def expected(b):
        b.enter()  # the first request
        b.enter()  # another request is in the server (being parsed): hold the batch open

        async def late():
            await asyncio.sleep(0.05)
            return await b.submit(["second"])

        return await asyncio.gather(b.submit(["first"]), late())

    run(with_batcher(rec, 8, 300, expected))
    assert rec.batches == [["first", "second"]]


def test_max_wait_closes_the_batch():
    rec = Recorder()

    async def body(b):
        b.enter()  # this request
        b.enter()  # another one in the server that never submits (e.g. rejected late)
        t0 = time.perf_counter()
        await b.submit(["only"])
        return time.perf_counter() - t0

    waited = run(with_batcher(rec, 8, 100, body))
    assert 0.09 <= waited < 1.0
    assert rec.batches == [["only"]]


def test_inference_error_reaches_the_requests_and_the_batcher_keeps_going():
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise ValueError("boom")
        return "ok", texts

    async def body(b):
        with pytest.raises(ValueError, match="boom"):
            await b.submit(["a"])
        return await b.submit(["b"])

    assert run(with_batcher(flaky, 4, 5, body)) == ("ok", ["b"])


def test_two_workers_run_two_batches_at_once_and_answer_everyone():
    running, peak, lock = [0], [0], threading.Lock()

    def infer(texts):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return threading.current_thread().name, [len(t) for t in texts]

    async def body():
        batcher = MicroBatcher(infer, 2, 0, workers=2)
        await batcher.start()
        try:
            requests = [[f"text{i}"] for i in range(8)]
            return requests, await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.stop()

    requests, replies = run(body())
    assert peak[0] == 2  # never more batches at once than workers
    for req, (_, results) in zip(requests, replies, strict=True):
        assert results == [len(t) for t in req]
    assert {tag for tag, _ in replies} == {"tuneline-infer_0", "tuneline-infer_1"}


def test_join_gap_closes_a_held_batch_before_max_wait():
    rec = Recorder()

    async def body(b):
        b.enter()  # this request
        b.enter()  # another one in the server that never submits
        t0 = time.perf_counter()
        await b.submit(["only"])
        return time.perf_counter() - t0

    async def with_gap(body):
        batcher = MicroBatcher(rec, 8, 1000, join_gap_ms=20)
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    waited = run(with_gap(body))
    assert 0.015 <= waited < 0.5  # the 20 ms gap, not the 1 s max wait
    assert rec.batches == [["only"]]


class Gate:
    """An `infer` that blocks until released and records what it ran."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str]):
        self.batches.append(list(texts))
        self.release.wait(10)
        return "gate", [len(t) for t in texts]


def test_a_full_queue_refuses_at_once_and_the_count_follows_the_queue():
    gate = Gate()

    async def body():
        batcher = MicroBatcher(gate, 1, 0, max_queued_texts=3)
        await batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(["running"]))
            await asyncio.sleep(0.05)  # taken by the only worker: out of the queue
            queued = [asyncio.ensure_future(batcher.submit(["a", "b"]))]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await batcher.submit(["c", "d"])  # 2 + 2 > 3
            queued.append(asyncio.ensure_future(batcher.submit(["c"])))  # 2 + 1 fits
            await asyncio.sleep(0.01)
            full = batcher.queued_texts
            gate.release.set()
            await asyncio.gather(running, *queued)
            return full, batcher.queued_texts
        finally:
            gate.release.set()
            await batcher.stop()

    assert run(body()) == (3, 0)


def test_a_deadline_in_the_queue_drops_the_work_and_frees_its_room():
    gate = Gate()

    async def body():
        batcher = MicroBatcher(gate, 1, 0, max_queued_texts=2)
        await batcher.start()
        loop = asyncio.get_running_loop()
        try:
            running = asyncio.ensure_future(batcher.submit(["running"], loop.time() + 0.1))
            await asyncio.sleep(0.02)
            with pytest.raises(DeadlineExceeded) as late:
                await batcher.submit(["queued", "too"], loop.time() + 0.1)
            room = batcher.queued_texts
            with pytest.raises(DeadlineExceeded) as running_late:
                await running
            stuck_for = batcher.running_for()
            gate.release.set()
            answer = await batcher.submit(["after"], loop.time() + 5)
            return late.value, running_late.value, room, stuck_for, answer, batcher.running_for()
        finally:
            gate.release.set()
            await batcher.stop()

    late, running_late, room, stuck_for, answer, idle = run(body())
    assert late.started is False and running_late.started is True
    assert room == 0  # the expired request left the queue at once
    assert stuck_for >= 0.09 and idle == 0.0
    assert answer == ("gate", [5])
    assert gate.batches == [["running"], ["after"]]  # the expired one never ran
