"""Micro-batching: concurrent requests share one ONNX Runtime call.

A batch opens when a worker is free and a request is queued. It closes when it holds
`max_batch` texts, has been open `max_wait_ms`, or no request has joined it for
`join_gap_ms`, whichever comes first, with one refinement: if no other predict request is
in the server when it opens (a lone client), it closes at once, so a lone client pays no
batching delay. Under load, requests answered by the previous batch come back within a
millisecond or so and join, instead of the clients splitting into groups that take turns.
A short join gap closes the batch once that burst is over instead of idling the worker
until `max_wait_ms`; with single-threaded sessions it raised busy CPU from ~1.3 to ~1.6
of 2 cores, but on the default two-thread session the 16-client benchmark showed no
throughput difference beyond run-to-run noise (1 ms: 272-338 texts/s, 5 ms: 258-291), and
batches were smaller, so the default gap equals the wait. Requests are never split across
batches, so every text of one request is scored by the same model version.

Inference runs on `workers` threads (ONNX Runtime and `tokenizers` release the GIL), so
the event loop keeps accepting and parsing requests while batches run. With two workers
sharing one session, the next batch runs while the previous one's small ONNX Runtime ops
leave cores idle (MiniLM int8 on 2 cores: ~420 texts/s instead of ~370).

The queue is bounded: a request whose texts would take it past `max_queued_texts` is
refused at once (`QueueFull`), so overload costs a fast 503 instead of memory and ever
longer waits. A request may carry a deadline: if its result is not there by then it gets
`DeadlineExceeded`, and if it was still queued its texts are taken out and never run.
`running_for()` says how long the oldest running batch has been at it: ONNX Runtime
cannot be interrupted, so a batch that never returns holds its worker thread for good,
and the probes report it (see deploy/serve/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# infer(texts) -> (tag shared by the whole batch, one result per text)
InferFn = Callable[[list[str]], tuple[Any, Sequence[Any]]]


class QueueFull(RuntimeError):
    """The queue cannot take the request's texts: it is refused, not queued."""


class DeadlineExceeded(TimeoutError):
    """No result by the request's deadline; `started` is False if it never left the queue."""

    def __init__(self, started: bool) -> None:
        super().__init__("deadline exceeded " + ("while running" if started else "in the queue"))
        self.started = started


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    queued: bool = True  # still in the queue (counted in queued_texts), not yet in a batch


class MicroBatcher:
    """Queue texts from many requests and run them through `infer` in batches."""

    def __init__(self, infer: InferFn, max_batch: int, max_wait_ms: float,
                 workers: int = 1, join_gap_ms: float | None = None,
                 max_queued_texts: int | None = None) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1")
        self.infer = infer
        self.max_batch = max_batch
        self.workers = workers
        self.max_queued_texts = max_queued_texts  # None: unbounded (unit tests only)
        self.queued_texts = 0
        self._running: set[asyncio.Task] = set()
        self._batch_started: dict[int, float] = {}  # id of a running batch -> monotonic start
        self.max_wait_s = max(0.0, max_wait_ms) / 1e3
        # An open batch also closes once no request has joined it for this long: the
        # requests that were coming have come, and the worker should not sit idle.
        self.join_gap_s = self.max_wait_s if join_gap_ms is None else max(0.0, join_gap_ms) / 1e3
        self._pending: deque[_Item] = deque()
        self._in_flight = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="tuneline-infer")
        self._task = asyncio.create_task(self._run(), name="tuneline-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._pending:
            item = self._take()
            if not item.future.done():
                item.future.set_exception(RuntimeError("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def enter(self) -> None:
        """A predict request entered the server (called by the HTTP layer)."""
        self._in_flight += 1

    def leave(self) -> None:
        """A predict request has been answered, whatever the outcome."""
        self._in_flight = max(0, self._in_flight - 1)

    def running_for(self) -> float:
        """Seconds the longest-running batch has been running; 0 when none runs."""
        if not self._batch_started:
            return 0.0
        return time.monotonic() - min(self._batch_started.values())

    async def submit(self, texts: list[str], deadline: float | None = None
                     ) -> tuple[Any, list[Any]]:
        """Queue `texts`; return (batch tag, their results) once their batch has run.

        Args:
            texts: one request's texts (never split across batches).
            deadline: the event loop's clock (`loop.time()`) by which the result must be
                there; None waits as long as it takes.

        Raises:
            QueueFull: at once, when the texts would take the queue past max_queued_texts.
            DeadlineExceeded: at the deadline; texts still queued are dropped unrun.
        """
        if self._wakeup is None:
            raise RuntimeError("batcher is not started")
        if (self.max_queued_texts is not None
                and self.queued_texts + len(texts) > self.max_queued_texts):
            raise QueueFull(f"{self.queued_texts} texts queued, room for "
                            f"{self.max_queued_texts - self.queued_texts}")
        loop = asyncio.get_running_loop()
        item = _Item(list(texts), loop.create_future())
        self._pending.append(item)
        self.queued_texts += len(item.texts)
        self._wakeup.set()
        try:
            if deadline is not None:
                await asyncio.wait((item.future,), timeout=max(0.0, deadline - loop.time()))
                if not item.future.done():
                    raise DeadlineExceeded(started=not item.queued)
            return await item.future
        finally:
            if not item.future.done():
                item.future.cancel()  # a batch it was collected into skips it
            if item.queued:
                self._pending.remove(item)
                self._unqueue(item)

    def _take(self) -> _Item:
        item = self._pending.popleft()
        self._unqueue(item)
        return item

    def _unqueue(self, item: _Item) -> None:
        item.queued = False
        self.queued_texts -= len(item.texts)

    async def _run(self) -> None:
        while True:
            if not self._pending or len(self._running) >= self.workers:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect()
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._wakeup.set()  # a worker is free: the loop may open the next batch

    async def _collect(self) -> list[_Item]:
        # Decided once, when the batch opens: is anyone besides the queued requests in the
        # server (being parsed, or just answered and about to send again)?
        hold_open = self._in_flight > len(self._pending)
        first = self._take()
        batch, size = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            if self._pending:
                if size + len(self._pending[0].texts) > self.max_batch:
                    break  # the next request would not fit whole: it opens the next batch
                item = self._take()
                batch.append(item)
                size += len(item.texts)
                continue
            remaining = deadline - time.perf_counter()
            if not hold_open or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(remaining, self.join_gap_s))
            except TimeoutError:
                break
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # drop cancelled clients
        if not live:
            return
        texts = [t for item in live for t in item.texts]
        loop = asyncio.get_running_loop()
        self._batch_started[id(live)] = time.monotonic()
        try:
            tag, results = await loop.run_in_executor(self._executor, self.infer, texts)
        except Exception as exc:  # the failure belongs to these requests, not to the loop
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            del self._batch_started[id(live)]
        offset = 0
        for item in live:
            part = list(results[offset: offset + len(item.texts)])
            offset += len(item.texts)
            if not item.future.done():
                item.future.set_result((tag, part))
