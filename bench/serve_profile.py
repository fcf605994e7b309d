"""Where a serving run's CPU goes: per-thread CPU of the server, the client's CPU, and the
server's own stage counters, turned into microseconds of CPU per text served.

On 2 cores at saturation, every text costs 2 core-seconds / throughput. The runtime's
in-process ceiling spends 2 / ceiling of that in ONNX Runtime; whatever the server spends
beyond it is the gap: the event loop (HTTP parsing, JSON, validation, batching), the
inference thread's own work (tokenizing, batch assembly, softmax and monitoring), ONNX
Runtime running less efficiently than at the ceiling (padding, smaller batches, sharing
cores), the load client (it shares the machine), and idle cores.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import httpx

TICK = os.sysconf("SC_CLK_TCK")
STAGES = ("tokenize", "assemble", "onnxruntime", "postprocess")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process: the main thread (uvicorn's event loop) and all others."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listing and reading
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        if int(task.name) == pid:
            main += seconds
        else:
            other += seconds
    return {"event_loop": main, "other_threads": other}


def _machine_busy_s() -> float:
    """CPU seconds all cores of the machine have been busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK  # minus idle and iowait


def _own_cpu_s(server_pid: int | None) -> float:
    """CPU seconds of this process, its finished children and the (running) server."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    if server_pid is not None:
        total += sum(thread_cpu(server_pid).values())
    return total


class ForeignLoad:
    """How many cores other processes of the machine kept busy during a `with` block.

    On a machine shared with other jobs, a measurement taken while they ran says little;
    the benchmark records this for every phase and keeps the quiet ones.
    """

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.cores = 0.0

    def __enter__(self) -> ForeignLoad:
        self._t0 = time.perf_counter()
        self._busy0, self._own0 = _machine_busy_s(), _own_cpu_s(self.server_pid)
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        foreign = (_machine_busy_s() - self._busy0) - (_own_cpu_s(self.server_pid) - self._own0)
        self.cores = max(0.0, foreign / wall)


def server_counters(url: str) -> dict[str, float]:
    """Stage seconds, token counts, texts and batches from the server's /metrics."""
    wanted = {f'tuneline_inference_stage_seconds_total{{stage="{s}"}}': s for s in STAGES}
    wanted.update({'tuneline_tokens_total{kind="text"}': "tokens",
                   'tuneline_tokens_total{kind="padded"}': "padded_tokens",
                   "tuneline_texts_total": "texts",
                   "tuneline_batch_size_texts_count": "batches"})
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def cpu_profile(cpu: tuple[dict, dict], counters: tuple[dict, dict], load: dict,
                ceiling_texts_per_s: float, cores: int) -> dict:
    """Microseconds of CPU per text served, by where they went, against the ceiling's."""
    used = _delta(cpu[1], cpu[0])
    c = _delta(counters[1], counters[0])
    texts = max(c.get("texts", 0.0), 1.0)
    per_text = 1e6 / texts
    budget = cores * load["seconds"] * per_text  # every core-microsecond of the run, per text
    stage = {s: c.get(s, 0.0) * per_text for s in STAGES}
    own = used["event_loop"] + used["other_threads"] + load["client_cpu_s"]
    return {
        "texts": texts,
        "cpu_us_per_text": own * per_text,
        "us_per_text": {
            "available": budget,
            "ceiling_onnxruntime": cores * 1e6 / ceiling_texts_per_s,
            "server_event_loop": used["event_loop"] * per_text,
            "server_inference_threads": used["other_threads"] * per_text,
            "client": load["client_cpu_s"] * per_text,
            "idle_or_other_processes": budget - own * per_text,
        },
        # wall time in the inference threads (ONNX Runtime's own pool threads not included)
        "inference_stage_wall_us_per_text": stage,
        "mean_batch_texts": texts / max(c.get("batches", 0.0), 1.0),
        "padding_share": 1 - c.get("tokens", 0.0) / max(c.get("padded_tokens", 0.0), 1.0),
    }
