"""One zeroth-order benchmark measurement, run in its own process by bench/bench_zo.py.

    python -m bench.zo_measure speed MODE [--repeats N] [--batch B] [--seq S]
        MODE: forward | mezo | mezo_naive | adamw. Times one forward / one training step
        on MiniLM-L6 and reports the peak RSS of the measured phase.
        MODE interleaved: forward and MeZO step alternately in one process (ratio check).

The last stdout line is one JSON object (bench/common.py run_isolated reads it).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bench.common import peak_rss_mb, summarize_ms, time_ms
from components.config import load_params


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM), so model loading is not counted."""
    Path("/proc/self/clear_refs").write_text("5")


def phase_peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def loss_fn(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"])


def naive_mezo_step(params, model, batch, seed, lr, eps):
    """The textbook MeZO step, for reference: in place, fresh normals four times."""

    def perturb(scale):
        gen = torch.Generator().manual_seed(seed)
        for p in params:
            p.data.add_(torch.randn(p.shape, generator=gen), alpha=scale)

    with torch.inference_mode():
        perturb(eps)
        plus = float(loss_fn(model, batch))
        perturb(-2 * eps)
        minus = float(loss_fn(model, batch))
        perturb(eps)
        perturb(-lr * (plus - minus) / (2 * eps))


def setup(batch_size: int, seq: int):
    """MiniLM-L6 with a 10-class head and one fixed random batch, at params threads.

    Every parameter is trainable (embeddings too) and MeZO perturbs all of them with the
    central (SPSA) estimate and one seed, whatever params.yaml chooses for training runs:
    the speed and memory goals are about full-model steps.
    """
    from components.model.modeling import build_classifier

    params = load_params(overrides=["finetune.freeze_embeddings=false",
                                    "finetune.mezo.target=all", "finetune.mezo.estimator=spsa",
                                    "finetune.mezo.n_samples=1"])
    torch.set_num_threads(params.model.num_threads)
    labels = [f"c{i}" for i in range(10)]
    model, _ = build_classifier(params, labels)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (batch_size, seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, len(labels), (batch_size,), generator=gen)}
    return params, model, batch


def step_fn(mode: str, params, model, batch):
    """A no-argument callable doing one unit of `mode`'s work on `batch`."""
    from components.model.modeling import trainable_parameters
    from components.train.finetune.base import build_strategy

    model.train(mode == "adamw")  # forward-only work runs in eval mode, as in the loop
    trainable = trainable_parameters(model)
    counter = iter(range(10**9))
    if mode == "forward":
        def fn():
            with torch.inference_mode():
                loss_fn(model, batch)
        return fn
    if mode in ("mezo", "adamw"):
        params.finetune.strategy = mode
        strategy = build_strategy(params.finetune, trainable, 10**6)

        def fn():
            if mode == "adamw":
                strategy.step(model, batch, loss_fn, next(counter))
                return
            with torch.inference_mode():
                strategy.step(model, batch, loss_fn, next(counter))
        return fn
    if mode == "mezo_naive":
        ps = [p for _, p in trainable]
        cfg = params.finetune.mezo

        def fn():
            naive_mezo_step(ps, model, batch, next(counter), cfg.lr, cfg.eps)
        return fn
    raise SystemExit(f"unknown mode {mode!r}")


def speed(mode: str, repeats: int, batch_size: int, seq: int, warmup: int) -> dict:
    params, model, batch = setup(batch_size, seq)
    fn = step_fn(mode, params, model, batch)
    gc.collect()
    reset_peak_rss()
    cpu0 = time.process_time()
    samples = time_ms(fn, repeats=repeats, warmup=warmup)
    cpu = (time.process_time() - cpu0) / (repeats + warmup)
    return {"mode": mode, **summarize_ms(samples), "samples_ms": samples,
            "cpu_seconds_per_call": cpu, "phase_peak_rss_mb": phase_peak_rss_mb(),
            "process_peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
            "batch": batch_size, "seq": seq}


def interleaved(repeats: int, batch_size: int, seq: int, warmup: int) -> dict:
    """Forward and MeZO step alternately in one process: both see the same machine load
    at nearly the same moment, a cross-check on the separate-process ratio."""
    params, model, batch = setup(batch_size, seq)
    forward = step_fn("forward", params, model, batch)
    mezo = step_fn("mezo", params, model, batch)
    for _ in range(warmup):
        forward()
        mezo()
    fwd, step = [], []
    for _ in range(repeats):
        fwd += time_ms(forward, repeats=1, warmup=0)
        step += time_ms(mezo, repeats=1, warmup=0)
    ratios = [s / f for s, f in zip(step, fwd, strict=True)]
    return {"mode": "interleaved", "forward_median_ms": statistics.median(fwd),
            "mezo_median_ms": statistics.median(step),
            "ratio_of_medians": statistics.median(step) / statistics.median(fwd),
            "median_pair_ratio": statistics.median(ratios),
            "forward_samples_ms": fwd, "mezo_samples_ms": step,
            "threads": torch.get_num_threads(), "batch": batch_size, "seq": seq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("mode")
    sp.add_argument("--repeats", type=int, default=15)
    sp.add_argument("--batch", type=int, default=16)
    sp.add_argument("--seq", type=int, default=64)
    sp.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()
    if args.mode == "interleaved":
        result = interleaved(args.repeats, args.batch, args.seq, args.warmup)
    else:
        result = speed(args.mode, args.repeats, args.batch, args.seq, args.warmup)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
