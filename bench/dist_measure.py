"""One process (or one rank under torchrun) of the distributed training benchmark.

    python -m bench.dist_measure OUT.json [--steps N] [--es-steps N] [--batch B] [--seq S]
                                          [--model BACKBONE_FOLDER]

Runs by bench/bench_dist.py: plainly for 1 rank, under torchrun for 2. Each rank uses one
torch thread and MiniLM-L6 with a 10-class head (params.yaml's trainable set), and takes
its share of a fixed random global batch of `batch` x ranks rows, as the training loop
does. For adamw (DDP), mezo and es it times `steps` steps after one warm-up step and
counts the bytes handed to collectives (components/train/finetune/distributed.py counts every
collective the steps call, DDP's gradient buckets through a communication hook). Rank 0
writes the JSON to OUT.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import machine_info
from components.config import load_params

STRATEGIES = ("adamw", "mezo", "es")


def measure(strategy: str, steps: int, batch_size: int, seq: int,
            model_overrides: list[str]) -> dict:
    from components.model.modeling import build_classifier, trainable_parameters
    from components.train.finetune import distributed
    from components.train.finetune.base import build_strategy
    from components.train.finetune.loop import _one_step, seed_everything
    from components.train.finetune.validation import classification_loss

    params = load_params(overrides=[f"finetune.strategy={strategy}", *model_overrides])
    d = distributed.init(params)
    torch.set_num_threads(1)
    seed_everything(params.finetune.seed)
    labels = [f"c{i}" for i in range(10)]
    model, _ = build_classifier(params, labels)
    strategy_obj = build_strategy(params.finetune, trainable_parameters(model), 10**6, d)
    model.train(strategy_obj.uses_grad)
    forward = d.wrap(model) if strategy_obj.uses_grad else model
    gen = torch.Generator().manual_seed(0)
    n = batch_size * d.world  # the global batch; each rank evaluates its share
    ids = torch.randint(1000, 29000, (n, seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, len(labels), (n,), generator=gen)}
    _one_step(forward, strategy_obj, batch, 0, classification_loss)  # warm-up
    d.barrier()
    sent0, t0 = d.bytes_sent, time.perf_counter()
    for step in range(1, steps + 1):
        _one_step(forward, strategy_obj, batch, step, classification_loss)
    d.barrier()
    seconds = time.perf_counter() - t0
    n_trainable = sum(p.numel() for _, p in trainable_parameters(model))
    return {"ranks": d.world, "global_batch": n, "steps": steps,
            "seconds_per_step": seconds / steps, "examples_per_s": n * steps / seconds,
            "bytes_sent_per_step_per_rank": (d.bytes_sent - sent0) / steps,
            "trainable_params": n_trainable}


def main() -> None:
    from components.io import atomic_write_json
    from components.train.finetune import distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--es-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--model", help="another backbone folder (a quick check of this script)")
    args = ap.parse_args()
    model = [f"model.name_or_path={args.model}"] if args.model else []
    results = {}
    for strategy in STRATEGIES:
        steps = args.es_steps if strategy == "es" else args.steps
        results[strategy] = measure(strategy, steps, args.batch, args.seq, model)
    d = distributed.init(load_params())
    if d.is_main:
        atomic_write_json(args.out, {"results": results, "machine": machine_info()})
    distributed.shutdown(d)


if __name__ == "__main__":
    main()
