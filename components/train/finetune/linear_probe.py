"""Fit the classification head on frozen features before zeroth-order training.

A random head makes zeroth-order training very slow: the first thousands of steps are
spent finding a linear map a closed-form fit gets in one go. So the head's inputs are
collected with forward passes (no autograd), and a multinomial logistic regression with
L2 penalty is fitted to them with L-BFGS, then written into the head in place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from components.config import LinearProbeConfig

Batch = dict[str, torch.Tensor]


def find_head(model: nn.Module, batch: Batch) -> nn.Linear:
    """The nn.Linear that produces the logits: the last one called whose width matches.

    Works for BERT-style heads and for PEFT-wrapped models (where the trainable copy in
    `modules_to_save` is the one actually called).
    """
    calls: list[nn.Linear] = []
    handles = [m.register_forward_hook(lambda mod, a, o: calls.append(mod))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            logits = _logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    n_classes = logits.shape[-1]
    heads = [m for m in calls if m.out_features == n_classes]
    if not heads:
        raise ValueError("linear probe: no nn.Linear produces the logits of this model")
    return heads[-1]


def _logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def collect_features(model: nn.Module, head: nn.Linear,
                     batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of `head` (N x in_features) and labels (N) over `batches`, in eval mode
    (per scored token for a token classifier)."""
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda mod, args, out: feats.append(args[0].detach()))
    was_training = model.training
    model.eval()  # no dropout: the probe must see the features inference will see
    try:
        with torch.inference_mode():
            for batch in batches:
                _logits(model, batch)
                labels.append(batch["labels"])
    finally:
        handle.remove()
        model.train(was_training)
    if not feats:
        raise ValueError("linear probe: no training batches")
    x = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    # Token classification: a feature per token, kept where a tag is scored.
    y = torch.cat([lab.reshape(-1) for lab in labels])
    keep = y != -100
    return x[keep], y[keep]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
                 max_iter: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Multinomial logistic regression by L-BFGS in float64: (weight, bias, final loss).

    Minimizes mean cross-entropy + l2/2 * ||W||^2 (the bias is not penalised).
    """
    with torch.inference_mode(False), torch.enable_grad():
        # Features come from inference-mode forwards; fresh copies may enter autograd.
        return _lbfgs(x.to(torch.float64).clone(), y.long().clone(), n_classes, l2, max_iter)


def _lbfgs(x64: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    w = torch.zeros(n_classes, x64.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                            tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x64 @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), float(closure().detach())


def fit_linear_probe(model: nn.Module, batches: Iterable[Batch],
                     cfg: LinearProbeConfig) -> dict[str, float]:
    """Fit the classification head in place on frozen features.

    Args:
        model: a classifier whose logits come from a final nn.Linear.
        batches: training batches with "input_ids", "attention_mask" and "labels".
        cfg: L2 penalty and L-BFGS iteration budget.

    Returns:
        Metrics: training loss and accuracy of the fitted head before/after, examples
        used and seconds spent.
    """
    t0 = time.perf_counter()
    batches = list(batches)
    if not batches:
        raise ValueError("linear probe: no training batches")
    head = find_head(model, batches[0])
    x, y = collect_features(model, head, batches)
    n_classes = head.out_features
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"linear probe: labels outside 0..{n_classes - 1}")
    with torch.inference_mode():
        before = _head_scores(x, y, head.weight.to(torch.float64), _bias(head))
    w, b, loss = fit_logistic(x, y, n_classes, cfg.l2, cfg.max_iter)
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(b.to(head.bias.dtype))
    after = _head_scores(x, y, w, b if head.bias is not None else torch.zeros_like(b))
    return {"loss_before": before[0], "accuracy_before": before[1], "loss": after[0],
            "accuracy": after[1], "objective": loss, "examples": float(len(y)),
            "seconds": time.perf_counter() - t0}


def _bias(head: nn.Linear) -> torch.Tensor:
    if head.bias is None:
        return torch.zeros(head.out_features, dtype=torch.float64)
    return head.bias.detach().to(torch.float64)


def _head_scores(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                 b: torch.Tensor) -> tuple[float, float]:
    logits = x.to(torch.float64) @ w.T + b
    loss = float(nn.functional.cross_entropy(logits, y))
    acc = float((logits.argmax(-1) == y).double().mean())
    return loss, acc
