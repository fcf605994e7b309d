"""A smaller model to serve: keep some of the teacher's layers, distil the teacher into it.

The student is the fine-tuned teacher with only `compress.keep_layers` of its transformer
layers (embeddings, the kept layers and the head start from the teacher's weights), trained
with the one training loop on
    alpha * T^2 * KL(teacher / T || student / T) + (1 - alpha) * cross-entropy(gold label)
    + hidden_weight * mean over student layers j of
      MSE(mean-pooled output of student layer j, of teacher layer map[j])
where `layer_map` spreads the student's layers evenly over the teacher's (TinyBERT's
uniform map: with 3 of 6 layers, student layer 1, 2, 3 learns teacher layer 2, 4, 6), so
the student's last layer, whose mean the head reads, learns the teacher's sentence vector.
The rows: the train split, with `compress.unlabeled` the unlabeled text, and
`compress.augment_copies` altered copies of each (some words masked, a span dropped, or
the halves of two texts spliced), so the student sees many more teacher outputs than there
are labeled rows; rows with no gold label carry the teacher's terms alone. The teacher's
logits and pooled states are computed once, before training: a step pays only the
student's forward and backward. `compress.budget_cpu_s` bounds the steps' CPU time; the
loop stops on validation as fine-tuning does and ships its best checkpoint. The student is
saved as an ordinary model folder, so evaluate, export and the gate treat it like any
challenger.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.config import CompressConfig, Params
from components.model.encoding import Encoded, encode
from components.train.finetune.loggers import MetricsLogger


def keep_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the transformer layers `keep` (in that order).

    Raises:
        ValueError: the architecture has no `encoder.layer` stack, or an index is out of
            range or repeated.
    """
    student = copy.deepcopy(model)
    backbone = getattr(student, student.base_model_prefix, None)
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"compress: {type(model).__name__} has no encoder.layer stack to "
                         "drop layers from")
    if len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise ValueError(f"compress.keep_layers {keep}: need distinct indices in "
                         f"0..{len(layers) - 1}")
    backbone.encoder.layer = nn.ModuleList(layers[i] for i in keep)
    student.config.num_hidden_layers = len(keep)
    backbone.config.num_hidden_layers = len(keep)
    return student


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher hidden-state index (0 = embeddings, i = output of layer i) each student
    layer's output learns: spread evenly, the last to the last."""
    return [int(round((j + 1) * n_teacher / n_student)) for j in range(n_student)]


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors that are not padding: [batch, hidden]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def loss_terms(model: nn.Module, batch: dict[str, torch.Tensor], temperature: float,
               hidden: bool) -> dict[str, torch.Tensor]:
    """The distillation terms of one batch: `soft` (T^2 KL to the teacher's softened
    distribution), `gold` (cross-entropy on the rows with a label, absent when none has
    one) and, with `hidden`, `hidden` (MSE of each student layer's mean-pooled output
    against its mapped teacher layer's)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=hidden)
    logits = out.logits
    terms = {"soft": F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                              F.softmax(batch["teacher_logits"] / temperature, dim=-1),
                              reduction="batchmean") * temperature ** 2}
    labeled = batch["labels"] >= 0
    if labeled.any():
        terms["gold"] = F.cross_entropy(logits[labeled], batch["labels"][labeled])
    if hidden:
        pooled = torch.stack([mean_pooled(h, batch["attention_mask"])
                              for h in out.hidden_states[1:]], dim=1)
        terms["hidden"] = F.mse_loss(pooled, batch["teacher_hidden"])
    return terms


def distillation_loss(temperature: float, alpha: float, hidden_weight: float = 0.0):
    """The loop's loss_fn for a batch carrying `teacher_logits` (and, with `hidden_weight`
    > 0, `teacher_hidden`); a label of -1: no gold label."""
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = hidden_weight > 0 and "teacher_hidden" in batch
        terms = loss_terms(model, batch, temperature, hidden)
        total = alpha * terms["soft"]
        if "gold" in terms:
            total = total + (1 - alpha) * terms["gold"]
        if hidden:
            total = total + hidden_weight * terms["hidden"]
        return total
    return loss


def augment(texts: list[str], copies: int, seed: int, mask_token: str) -> list[str]:
    """`copies` altered versions of each text: 15% of its words masked, a span of up to a
    third of them dropped, or its first half joined to the second half of another text."""
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            kind = rng.randrange(3)
            if kind == 0 or len(words) < 4:
                words = [mask_token if rng.random() < 0.15 else w for w in words]
            elif kind == 1:
                span = rng.randint(1, max(1, len(words) // 3))
                start = rng.randrange(len(words) - span + 1)
                words = words[:start] + words[start + span:]
            else:
                other = rng.choice(texts).split()
                words = words[: len(words) // 2] + other[len(other) // 2:]
            out.append(" ".join(words) or text)
    return out


def teacher_targets(teacher: nn.Module, tokenizer: Any, texts: list[str], max_length: int,
                    batch_size: int, layers: list[int] | None) -> tuple[torch.Tensor, Any]:
    """The teacher's logits [n, classes] and, for `layers`, its mean-pooled hidden states
    [n, len(layers), hidden], computed once for every distillation row."""
    logits, pooled = [], []
    teacher.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i: i + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            out = teacher(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          output_hidden_states=layers is not None)
            logits.append(out.logits.float())
            if layers is not None:
                pooled.append(torch.stack([mean_pooled(out.hidden_states[k],
                                                       enc["attention_mask"])
                                           for k in layers], dim=1).float())
    return torch.cat(logits), (torch.cat(pooled) if layers is not None else None)


def student_params(params: Params, max_length: int | None = None) -> Params:
    """The loop's settings for distillation: `compress.*` where it has its own, the rest of
    `finetune` as is (AdamW, a head that is kept: it comes from the teacher), and the
    teacher's input length."""
    cfg = params.compress
    finetune = params.finetune.model_copy(update={
        "strategy": "adamw", "head_init": "random", "budget_cpu_s": cfg.budget_cpu_s,
        "max_steps": cfg.max_steps, "batch_size": cfg.batch_size,
        "eval_every": cfg.eval_every, "checkpoint_every": cfg.eval_every,
        "adamw": params.finetune.adamw.model_copy(update={"lr": cfg.lr})})
    # The student is a plain model: any LoRA / IA3 of the teacher is merged into it.
    model = params.model if max_length is None else params.model.model_copy(
        update={"max_length": max_length})
    return params.model_copy(update={"finetune": finetune, "model": model,
                                     "peft": params.peft.model_copy(update={"method": "none"})})


def distill(params: Params, teacher_dir: str | Path, prepared_dir: str | Path,
            out_dir: str | Path, unlabeled: list[str], *, checkpoint_dir: str | Path,
            logger: MetricsLogger | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the student of the model in `teacher_dir`; save it to `out_dir`.

    Returns:
        The loop's metrics plus the student's and teacher's layer and parameter counts and
        how many rows of each kind were distilled.
    """
    from components.data.files import load_split
    from components.model.modeling import load_trained
    from components.model.unwrap import merge_for_export
    from components.train.finetune.loop import Prebuilt, train

    cfg: CompressConfig = params.compress
    teacher = load_trained(teacher_dir)
    if teacher.meta.get("peft_method") in ("prompt_tuning", "prefix_tuning"):
        raise ValueError("compress: a prompt- or prefix-tuned teacher has no plain layers to "
                         "keep; use peft.method none, lora or ia3")
    merged = merge_for_export(teacher.model)
    student = keep_layers(merged, list(cfg.keep_layers)).train()
    texts, labels = load_split(prepared_dir, "train")
    extra = unlabeled if cfg.unlabeled else []
    copies = augment(texts + extra, cfg.augment_copies, params.finetune.seed,
                     teacher.tokenizer.mask_token or "[MASK]")
    rows = texts + extra + copies
    max_length = int(teacher.meta["max_length"])
    layers = (layer_map(len(cfg.keep_layers), merged.config.num_hidden_layers)
              if cfg.hidden_weight > 0 else None)
    soft, hidden = teacher_targets(merged, teacher.tokenizer, rows, max_length,
                                   params.evaluate.batch_size, layers)
    data: Encoded = encode(teacher.tokenizer, rows, labels + [-1] * (len(rows) - len(texts)),
                           max_length)
    data.targets, data.hidden_targets = soft, hidden
    if params.finetune.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    metrics = train(student_params(params, max_length), prepared_dir, out_dir,
                    checkpoint_dir=checkpoint_dir, logger=logger, resume=resume,
                    prebuilt=Prebuilt(student, teacher.tokenizer, data,
                                      distillation_loss(cfg.temperature, cfg.alpha,
                                                        cfg.hidden_weight)))
    return {**metrics, "keep_layers": list(cfg.keep_layers), "layer_map": layers,
            "teacher_layers": merged.config.num_hidden_layers,
            "teacher_params": sum(p.numel() for p in merged.parameters()),
            "teacher_val_accuracy": teacher.meta.get("metrics", {}).get("val_accuracy"),
            "distilled_rows": len(texts), "distilled_unlabeled_rows": len(extra),
            "distilled_augmented_rows": len(copies)}


def speed_vs_teacher(student_dir: str | Path, teacher_dir: str | Path, texts: list[str],
                     batch_size: int, repeats: int = 3) -> dict[str, float]:
    """Texts per second of the student and the teacher (torch, this process, the same
    texts, median of `repeats`), and their ratio."""
    import time

    from components.evaluate.report import torch_logits
    from components.model.modeling import load_trained

    out = {}
    for name, folder in (("student", student_dir), ("teacher", teacher_dir)):
        trained = load_trained(folder)
        length = int(trained.meta["max_length"])
        torch_logits(trained.model, trained.tokenizer, texts[:batch_size], length, batch_size)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch_logits(trained.model, trained.tokenizer, texts, length, batch_size)
            times.append(time.perf_counter() - t0)
        out[f"{name}_texts_per_s"] = len(texts) / sorted(times)[len(times) // 2]
    out["speedup_vs_teacher"] = out["student_texts_per_s"] / out["teacher_texts_per_s"]
    return out
