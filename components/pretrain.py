"""Masked-LM continued pretraining: adapt the backbone to the domain's unlabeled text.

The held-out texts are masked once with a fixed seed, so the loss before and after training
is measured on exactly the same masked tokens. The output folder is a plain backbone
(encoder + pooler + tokenizer) that `build_classifier(..., init_dir=out_dir)` loads.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from components.config import Params
from components.finetune.loggers import MetricsLogger, null_logger
from components.io import atomic_dir, atomic_write_json
from components.modeling import resolve_backbone

Batch = dict[str, torch.Tensor]
METRICS_FILE = "pretrain_metrics.json"


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, heldout) split of the unlabeled texts; both sides are non-empty."""
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise ValueError(f"MLM pretraining needs at least 2 non-empty texts, got {len(texts)}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    return [texts[i] for i in order[n_held:]], [texts[i] for i in order[:n_held]]


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Any,
                probability: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the real tokens; 80% [MASK], 10% random, 10% kept.

    Returns (masked input ids, labels with -100 on tokens that are not predicted).
    """
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    candidates = attention_mask.bool() & ~special
    chosen = (torch.rand(input_ids.shape, generator=gen) < probability) & candidates
    # Guarantee at least one prediction per sequence with a real token, else its loss is void.
    for row in range(input_ids.shape[0]):
        if not chosen[row].any() and candidates[row].any():
            idx = candidates[row].nonzero().flatten()
            chosen[row, idx[torch.randint(len(idx), (1,), generator=gen)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=gen)
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=gen)
    return masked, labels


def make_batch(tokenizer: Any, texts: list[str], max_length: int, probability: float,
               gen: torch.Generator) -> Batch:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    ids, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], tokenizer,
                              probability, gen)
    return {"input_ids": ids, "attention_mask": enc["attention_mask"], "labels": labels}


def heldout_loss(model: nn.Module, batches: list[Batch]) -> float:
    """Token-weighted mean MLM loss over fixed, pre-masked batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for b in batches:
            n = int((b["labels"] != -100).sum())
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        labels=b["labels"])
            total += float(out.loss) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def pretrain_mlm(params: Params, texts: list[str], out_dir: str | Path,
                 logger: MetricsLogger | None = None) -> dict[str, Any]:
    """Continue masked-LM training of the backbone on `texts`; save the adapted backbone.

    Returns:
        heldout_loss_before/after, perplexity_before/after, steps, train_seconds, n_train,
        n_heldout. Also written to `out_dir/pretrain_metrics.json`.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    cfg, log = params.pretrain, logger or null_logger
    torch.set_num_threads(params.model.num_threads)
    torch.manual_seed(cfg.seed)
    source = resolve_backbone(params.model.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForMaskedLM.from_pretrained(source)
    train_texts, held_texts = split_heldout(texts, cfg.heldout_fraction, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    size, max_len = cfg.batch_size, params.model.max_length
    held = [make_batch(tokenizer, held_texts[i:i + size], max_len, cfg.mlm_probability, gen)
            for i in range(0, len(held_texts), size)][: cfg.eval_batches]
    before = heldout_loss(model, held)
    log({"pretrain/heldout_loss": before}, 0)
    seconds = _train_mlm(model, tokenizer, train_texts, params, gen, log)
    after = heldout_loss(model, held)
    log({"pretrain/heldout_loss": after}, cfg.max_steps)
    metrics = {"heldout_loss_before": before, "heldout_loss_after": after,
               "perplexity_before": _perplexity(before), "perplexity_after": _perplexity(after),
               "steps": cfg.max_steps, "train_seconds": round(seconds, 3),
               "n_train": len(train_texts), "n_heldout": len(held_texts)}
    save_backbone(model, tokenizer, source, out_dir, metrics)
    return metrics


def _train_mlm(model: nn.Module, tokenizer: Any, texts: list[str], params: Params,
               gen: torch.Generator, log: MetricsLogger) -> float:
    cfg = params.pretrain
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.max_steps), desc="pretrain", disable=None):
        idx = torch.randint(len(texts), (min(cfg.batch_size, len(texts)),), generator=gen)
        batch = make_batch(tokenizer, [texts[i] for i in idx.tolist()],
                           params.model.max_length, cfg.mlm_probability, gen)
        loss = model(**batch).loss
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"MLM pretraining diverged: loss {value} at step {step + 1}"
                               f" (lower pretrain.lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log({"pretrain/loss": value}, step + 1)
    return time.perf_counter() - t0


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped so an untrained head cannot overflow


def save_backbone(mlm_model: nn.Module, tokenizer: Any, source: str, out_dir: str | Path,
                  metrics: dict[str, Any]) -> Path:
    """Save the adapted encoder as a plain backbone folder, keeping the source's pooler.

    The MLM model has no pooler, but the classifier uses it; so the source backbone is
    loaded whole and only the weights the MLM model trained are copied in.
    """
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(source)
    adapted = getattr(mlm_model, mlm_model.base_model_prefix).state_dict()
    missing, unexpected = backbone.load_state_dict(adapted, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"MLM encoder does not match the backbone: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    with atomic_dir(out_dir) as tmp:
        backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / METRICS_FILE, metrics)
    return Path(out_dir)
