"""Validation during training: loss / accuracy / macro-F1 and early stopping on one of them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.config import EarlyStoppingConfig
from components.model.encoding import Encoded
from components.train.finetune.batching import Batch, sequential_batches


def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the scored rows: per-token logits [batch, seq, tags] are
    flattened and the unscored positions (label -100) dropped."""
    if logits.dim() == 3:
        logits, labels = logits.flatten(0, 1), labels.flatten()
        keep = labels != -100
        return logits[keep], labels[keep]
    return logits, labels


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the model's logits against `batch["labels"]` (per text, or
    per scored token)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = scored(logits, batch["labels"])
    return F.cross_entropy(logits, labels)


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or predictions."""
    scores = []
    for c in range(n_classes):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def evaluate_split(model: nn.Module, data: Encoded, batch_size: int, n_classes: int,
                   max_batches: int = 0, device: torch.device | None = None,
                   ) -> dict[str, float]:
    """{"loss", "accuracy", "macro_f1"} of `model` on `data` (per token for token
    classification); leaves the model's mode as it was."""
    was_training = model.training
    model.eval()
    total_loss, preds, golds = 0.0, [], []
    with torch.inference_mode():
        # Sorted by length: the metrics do not depend on row order, padding does cost time.
        for batch in sequential_batches(data, batch_size, max_batches, by_length=True):
            if device is not None and device.type != "cpu":
                batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            logits, labels = scored(logits, batch["labels"])
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            preds.append(logits.argmax(-1))
            golds.append(labels)
    model.train(was_training)
    if not preds:
        raise ValueError("the validation split is empty")
    pred, gold = torch.cat(preds).cpu(), torch.cat(golds).cpu()
    return {"loss": total_loss / len(gold), "accuracy": float((pred == gold).float().mean()),
            "macro_f1": macro_f1(pred, gold, n_classes), "n": int(len(gold))}


@dataclass
class EarlyStopper:
    """Tracks one validation metric: which evaluation's weights to ship, and when to stop.

    A value better than the best by more than `min_delta` is the new best. With `noise_z`
    > 0 (accuracy, macro-F1), a value within `noise_z` standard errors of the best (the
    binomial sqrt(p (1 - p) / n) of the best on the n validation items) is no worse: its
    weights, trained longer, are shipped instead, and it does not count towards
    `patience`. So a lucky early peak on a small validation split neither stops the run
    nor is shipped over a later, equally good model. The run stops after `patience`
    evaluations that fall below the best by more than that, never before `min_steps`.
    `patience` 0 keeps tracking but never stops the run.
    """

    metric: str
    patience: int
    min_delta: float
    noise_z: float = 0.0
    min_steps: int = 0
    best: float | None = None
    best_step: int = 0     # the step whose weights are shipped
    peak_step: int = 0     # the step of the best value
    bad_evals: int = 0
    last_step: int = 0
    reason: str = ""

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig, max_steps: int = 0) -> EarlyStopper:
        return cls(metric=cfg.metric, patience=cfg.patience, min_delta=cfg.min_delta,
                   noise_z=cfg.noise_z, min_steps=int(math.ceil(cfg.min_fraction * max_steps)))

    def noise(self, metrics: dict[str, float]) -> float | None:
        """`noise_z` standard errors of the best value; None where no such rule applies."""
        n = metrics.get("n")
        if self.noise_z <= 0 or self.metric == "loss" or not n or self.best is None:
            return None
        p = min(max(self.best, 0.0), 1.0)
        return self.noise_z * math.sqrt(p * (1 - p) / n)

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record one evaluation; True when its weights become the ones to ship."""
        value = metrics[self.metric]
        self.last_step = step
        sign = -1.0 if self.metric == "loss" else 1.0  # loss: lower is better
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_step, self.peak_step, self.bad_evals = value, step, step, 0
            self.reason = f"best {self.metric} so far ({value:.4f})"
            return True
        noise = self.noise(metrics)
        if noise is not None and sign * (self.best - value) <= noise:
            self.best_step, self.bad_evals = step, 0
            self.reason = (f"{self.metric} {value:.4f} within {self.noise_z:g} standard errors "
                           f"({noise:.4f}) of the best {self.best:.4f} (step "
                           f"{self.peak_step}): the longer-trained weights")
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return (self.patience > 0 and self.bad_evals >= self.patience
                and self.last_step >= self.min_steps)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
