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


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Queue texts from many requests and run them through `infer` in batches."""

    def __init__(self, infer: InferFn, max_batch: int, max_wait_ms: float,
                 workers: int = 1, join_gap_ms: float | None = None) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1")
        self.infer = infer
        self.max_batch = max_batch
        self.workers = workers
        self._running: set[asyncio.Task] = set()
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
            item = self._pending.popleft()
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

    async def submit(self, texts: list[str]) -> tuple[Any, list[Any]]:
        """Queue `texts`; return (batch tag, their results) once their batch has run."""
        if self._wakeup is None:
            raise RuntimeError("batcher is not started")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(list(texts), future))
        self._wakeup.set()
        return await future

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
        first = self._pending.popleft()
        batch, size = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            if self._pending:
                if size + len(self._pending[0].texts) > self.max_batch:
                    break  # the next request would not fit whole: it opens the next batch
                item = self._pending.popleft()
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
        try:
            tag, results = await loop.run_in_executor(self._executor, self.infer, texts)
        except Exception as exc:  # the failure belongs to these requests, not to the loop
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in live:
            part = list(results[offset: offset + len(item.texts)])
            offset += len(item.texts)
            if not item.future.done():
                item.future.set_result((tag, part))
