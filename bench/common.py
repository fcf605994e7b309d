"""Shared benchmark plumbing: one measurement per process, medians, JSON results.

Timing on a shared 2-core machine is noisy, so every benchmark reports medians over
repeats and, where a goal is a ratio, measures both sides in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PROJECT_ROOT = BENCH_DIR.parent

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of `fn()` for each of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summarize_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "p95_ms": p95, "min_ms": ordered[0],
            "n": len(ordered)}


def run_isolated(module: str, *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run `python -m module args...` in a fresh process; it must print one JSON line last.

    Each measurement gets its own process so peak RSS and allocator state are its own.
    """
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json atomically, stamped with time and machine."""
    from components.io import atomic_write_json

    payload = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine_info(), **data}
    path = atomic_write_json(RESULTS_DIR / f"{name}.json", payload)
    print(json.dumps(payload, indent=2))
    return path
