"""The task-type interface: what the engines ask instead of testing a task name.

A task type says what is predicted (one label per text; one tag per word; ...) and answers,
for its kind of data and model, every question whose answer differs between tasks:

    data      `check` / `prepare`: read and validate an input file, split it, count per split
    training  `encode_split`: a prepared split as token ids + targets; `model_class`,
              `finish_model` and `peft_task_type`: the head the backbone gets
    evaluate  `evaluate`: score a reloaded model on the test split, write its report
    release   `parity_rows` + `measure`: what export checks the ONNX graphs on (each int8
              candidate in turn); `score_bundle`: the served graph's metrics on the test
              split plus the per-item
              statistics the gate's paired bootstrap and McNemar test resample
    serving   `load_runtime`: the torch-free runtime of a bundle (texts in, one JSON answer
              per text out); `reference`: the test-split prediction distribution that drift
              is measured against (None where answers are not one label per text)

Task types register by name (`@register_task_type`), as training strategies do; importing
`components.task_types` registers the built-in ones. Task types import their heavy engines
(torch, transformers) inside methods only training calls, so serving stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

TASK_TYPES: dict[str, TaskType] = {}


@dataclass
class ParityRows:
    """The rows export measures the ONNX graphs on: texts (what a tokenizer reads),
    gold targets, and for word-level tasks the words themselves."""

    texts: list[str]
    targets: list[Any]
    words: list[list[str]] | None = None

    def head(self, n: int) -> ParityRows:
        """The first `n` rows (all when n is 0)."""
        if not n:
            return self
        return ParityRows(self.texts[:n], self.targets[:n],
                          self.words[:n] if self.words is not None else None)


@dataclass
class Scores:
    """A bundle scored on the test split, in the form the gate judges.

    `items` holds one row of additive counts per test item (a text, a sentence) such that
    `metrics_of(items.sum(0))` gives the task's metrics; resampling rows of `items` is the
    paired bootstrap. `correct` says per item whether the model got it right (McNemar).
    """

    metrics: dict[str, float]
    items: np.ndarray
    correct: np.ndarray
    report: dict[str, Any]
    labels: list[str]
    timer: Any  # an object with .logits(texts, batch_size) that export.latency_ms can time
    texts: list[str] = field(default_factory=list)
    inputs: Any = None   # the test inputs, in the task's own form (texts, word lists)
    targets: Any = None  # the gold targets, in the task's own form


class Runtime:
    """A served bundle: texts in, one JSON-ready answer per text out (no torch)."""

    labels: list[str]
    sha256: str
    onnx: Any  # the bundle's served graph (a BundleClassifier: labels, sha256, platform)
    distribution: ClassVar[bool] = True  # answers are class probabilities (drift applies)

    def answer(self, texts: list[str], timings: Any = None) -> list[Any]:
        raise NotImplementedError

    def render(self, result: Any) -> dict[str, Any]:
        raise NotImplementedError

    def columns(self, texts: list[str], batch_size: int) -> dict[str, list]:
        """The pyfunc output columns for `texts`."""
        raise NotImplementedError


class TaskType:
    """One kind of prediction; see the module docstring for what each member answers."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the metrics the gate may judge
    peft_task_type: ClassVar[str]       # the member of peft.TaskType
    unit: ClassVar[str] = "row"         # what one test item is, in reports

    # data
    def check(self, input_path: str | Path, cfg: Any) -> Any:
        raise NotImplementedError

    def prepare(self, input_path: str | Path, out_dir: str | Path, cfg: Any) -> dict[str, Any]:
        raise NotImplementedError

    def texts(self, prepared_dir: str | Path, split: str) -> list[str]:
        """The split's inputs as plain texts (examples, pretraining, drift, lengths): every
        prepared row has a `text` (word lists keep their words joined by spaces)."""
        from components.data.files import load_texts

        return load_texts(prepared_dir, split)

    # training
    def encode_split(self, tokenizer: Any, prepared_dir: str | Path, split: str,
                     params: Any) -> Any:
        raise NotImplementedError

    def model_class(self, config: Any, pooling: str) -> type:
        raise NotImplementedError

    def finish_model(self, model: Any, pooling: str) -> Any:
        return model

    # evaluate and release
    def evaluate(self, trained: Any, prepared_dir: str | Path, out_dir: str | Path,
                 params: Any) -> dict[str, float]:
        raise NotImplementedError

    def parity_rows(self, prepared_dir: str | Path) -> ParityRows:
        raise NotImplementedError

    def split_predictions(self, trained: Any, prepared_dir: str | Path, split: str,
                          params: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """Gold and predicted class per row of a split (paired comparisons of two models on
        the same rows); None where a row has no single class."""
        return None

    def measure(self, model: Any, bundle: Path, rows: ParityRows, params: Any,
                graph: Any = None) -> dict[str, Any]:
        """Parity of the int8 `graph` (a ServedGraph; default: the bundle's served one)
        against fp32 and torch, sizes and latency, in the form the gate's int8 rules read."""
        raise NotImplementedError

    def score_bundle(self, bundle_dir: Path, prepared_dir: str | Path, params: Any) -> Scores:
        raise NotImplementedError

    def rescore(self, bundle_dir: Path, like: Scores, params: Any) -> Scores:
        """Another bundle (the champion) scored on the same test items as `like`."""
        raise NotImplementedError

    def metrics_of(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Metric values from summed item counts ([d] or [R, d] for R resamples)."""
        raise NotImplementedError

    # serving
    def load_runtime(self, bundle_dir: str | Path, *, threads: int, verify: bool = True,
                     session_config: dict[str, str] | None = None,
                     call_cost_tokens: int = 0, max_rows: int = 0) -> Runtime:
        raise NotImplementedError

    def reference(self, bundle_dir: str | Path, prepared_dir: str | Path, params: Any
                  ) -> dict[str, Any] | None:
        return None

    def output_schema(self) -> list[tuple[str, str]] | None:
        """pyfunc output columns as (name, MLflow type); None: no fixed schema."""
        return None


def model_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation report says about the model it scored (from its folder's meta)."""
    return {**{k: meta.get(k) for k in ("strategy", "peft_method", "params_hash", "backbone",
                                        "max_length")},
            "truncated_share": meta.get("metrics", {}).get("truncated_share")}


def register_task_type(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: add an instance of `cls` to TASK_TYPES under `cls.name`."""
    if cls.name in TASK_TYPES:
        raise ValueError(f"task type {cls.name!r} is already registered")
    TASK_TYPES[cls.name] = cls()
    return cls


def task_type(name: str) -> TaskType:
    """The registered task type `name`.

    Raises:
        ValueError: no task type of that name (the message lists the known ones).
    """
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"task.type {name!r}: unknown task type; known: "
                         f"{', '.join(sorted(TASK_TYPES))}") from None


DEFAULT = "sequence_classification"


def of_bundle(export_config: dict[str, Any]) -> TaskType:
    """The task type an exported bundle's export_config.json names."""
    return task_type(export_config.get("task", DEFAULT))
