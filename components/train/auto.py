"""Settings read from the training data: `model.max_length: auto` and `finetune.max_steps`,
`eval_every`, `checkpoint_every: auto`.

Length: the token count (special tokens included) that keeps `model.length_coverage` of the
training texts whole, rounded up to a multiple of 16, at most `model.max_length_cap` (the
cost ceiling: attention grows with the square of the length) and the backbone's own limit.
Steps: `finetune.epochs` passes over the train split at `finetune.batch_size` (times the
ranks), at least `finetune.min_steps` (small data needs more passes), at most
`finetune.max_auto_steps`; evaluations every tenth of that, a checkpoint at each.
A number given in params.yaml (or `--set`) always wins.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from components.config import AUTO, Params

ROUND_TO = 16
UNBOUNDED = 10**6  # what transformers sets as model_max_length when a tokenizer has none


def choose_max_length(lengths: np.ndarray, coverage: float, cap: int, limit: int) -> int:
    """The smallest multiple of 16 that covers `coverage` of `lengths`, within [16, cap]."""
    if len(lengths) == 0:
        return min(cap, limit)
    wanted = int(math.ceil(float(np.quantile(lengths, coverage))))
    rounded = int(math.ceil(wanted / ROUND_TO) * ROUND_TO)
    return max(ROUND_TO, min(rounded, cap, limit))


def choose_steps(n_train: int, batch_size: int, epochs: float, low: int, high: int) -> int:
    """`epochs` passes over `n_train` rows at `batch_size`, clamped to [low, high]."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return int(min(high, max(low, math.ceil(epochs * per_epoch))))


def backbone_limit(tokenizer: Any, config: Any = None) -> int:
    """The longest input the backbone takes: its tokenizer's model_max_length and its
    position embeddings, whichever is smaller (512 when neither says)."""
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    limit = limit if 0 < limit < UNBOUNDED else 512
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    return min(limit, positions) if positions > 0 else limit


def resolve(params: Params, prepared_dir: str | Path, tokenizer: Any = None,
            world: int = 1, config: Any = None) -> tuple[Params, dict[str, Any]]:
    """`params` with every `auto` of the model / finetune sections made a number for this
    training data, and what was chosen: {max_length, truncated_share, max_steps, ...}.

    `tokenizer` / `config`: the backbone's (loaded from `model.name_or_path` when not
    given); `world`: ranks sharing each global batch.
    """
    from components.task_types import task_type

    model, ft = params.model, params.finetune
    texts = task_type(params.task.type).texts(prepared_dir, "train")
    chosen: dict[str, Any] = {}
    max_length = model.max_length
    if tokenizer is None or config is None:
        tokenizer, config = _backbone(params, tokenizer, config)
    lengths = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]], dtype=np.int64)
    if max_length == AUTO:
        max_length = choose_max_length(lengths, model.length_coverage, model.max_length_cap,
                                       backbone_limit(tokenizer, config))
        chosen["max_length_auto"] = True
    chosen["max_length"] = int(max_length)
    chosen["truncated_share"] = float(np.mean(lengths > max_length)) if len(lengths) else 0.0
    chosen["train_length_p50"] = float(np.median(lengths)) if len(lengths) else 0.0
    steps = ft.max_steps
    if steps == AUTO:
        steps = choose_steps(len(texts), ft.batch_size * world, ft.epochs, ft.min_steps,
                             ft.max_auto_steps)
        chosen["max_steps_auto"] = True
    eval_every = ft.eval_every if ft.eval_every != AUTO else max(1, round(steps / 10))
    checkpoint_every = ft.checkpoint_every if ft.checkpoint_every != AUTO else eval_every
    chosen.update(max_steps=int(steps), eval_every=int(eval_every),
                  checkpoint_every=int(checkpoint_every))
    resolved = params.model_copy(update={
        "model": model.model_copy(update={"max_length": int(max_length)}),
        "finetune": ft.model_copy(update={"max_steps": int(steps), "eval_every": int(eval_every),
                                          "checkpoint_every": int(checkpoint_every)})})
    return resolved, chosen


def _backbone(params: Params, tokenizer: Any, config: Any) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from components.model.modeling import resolve_backbone

    source = resolve_backbone(params.model.name_or_path)
    return (tokenizer or AutoTokenizer.from_pretrained(source),
            config or AutoConfig.from_pretrained(source))
