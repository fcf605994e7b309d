"""A smaller model to serve: keep some of the teacher's layers, distil the teacher into it.

The student is the fine-tuned teacher with only `compress.keep_layers` of its transformer
layers (embeddings, the kept layers and the head start from the teacher's weights), trained
with the one training loop on
    alpha * T^2 * KL(teacher / T || student / T) + (1 - alpha) * cross-entropy(gold label)
over the train split, plus, with `compress.unlabeled`, the unlabeled text (soft targets
only: a row with no gold label contributes the distillation term alone). The teacher's
logits are computed once, before training. The student is saved as an ordinary model
folder, so evaluate, export and the gate treat it like any challenger.
"""

from __future__ import annotations

import copy
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


def distillation_loss(temperature: float, alpha: float):
    """The loop's loss_fn for a batch carrying `teacher_logits` (label -1: no gold label)."""
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                        F.softmax(batch["teacher_logits"] / temperature, dim=-1),
                        reduction="batchmean") * temperature ** 2
        labeled = batch["labels"] >= 0
        if not labeled.any():
            return alpha * soft
        hard = F.cross_entropy(logits[labeled], batch["labels"][labeled])
        return alpha * soft + (1 - alpha) * hard
    return loss


def student_params(params: Params, max_length: int | None = None) -> Params:
    """The loop's settings for distillation: `compress.*` where it has its own, the rest of
    `finetune` as is (AdamW, a head that is kept: it comes from the teacher), and the
    teacher's input length."""
    cfg = params.compress
    finetune = params.finetune.model_copy(update={
        "strategy": "adamw", "head_init": "random",
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
            logger: MetricsLogger | None = None) -> dict[str, Any]:
    """Train the student of the model in `teacher_dir`; save it to `out_dir`.

    Returns:
        The loop's metrics plus the student's and teacher's layer and parameter counts.
    """
    from components.data.files import load_split
    from components.evaluate.report import torch_logits
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
    max_length = int(teacher.meta["max_length"])
    soft = torch_logits(merged, teacher.tokenizer, texts + extra, max_length,
                        params.evaluate.batch_size)
    data: Encoded = encode(teacher.tokenizer, texts + extra, labels + [-1] * len(extra),
                           max_length)
    data.targets = torch.from_numpy(soft)
    if params.finetune.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    metrics = train(student_params(params, max_length), prepared_dir, out_dir,
                    checkpoint_dir=checkpoint_dir, logger=logger,
                    prebuilt=Prebuilt(student, teacher.tokenizer, data,
                                      distillation_loss(cfg.temperature, cfg.alpha)))
    return {**metrics, "keep_layers": list(cfg.keep_layers),
            "teacher_layers": merged.config.num_hidden_layers,
            "teacher_params": sum(p.numel() for p in merged.parameters()),
            "distilled_rows": len(texts), "distilled_unlabeled_rows": len(extra)}
