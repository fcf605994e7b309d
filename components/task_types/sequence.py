"""Sequence classification: one label per text.

Data: a text column and a label column (`components.data.checks`). Model: the backbone
with a pooled classification head (`components.model.pooling`). Gate items: one text each,
counted as its cell of the confusion matrix, so accuracy and macro-F1 of any resample are
sums of rows. Serving: label, its probability and every class probability per text,
length-bucketed batches; drift is measured on the predicted-label distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.release.inference import BucketedClassifier
from components.release.predictor import softmax
from components.release.runtimes import load_classifier
from components.task_types.base import (
    ParityRows,
    Runtime,
    Scores,
    TaskType,
    model_summary,
    register_task_type,
)


class SequenceRuntime(Runtime):
    """A classifier bundle's served graph; `answer` gives class probabilities per text."""

    distribution = True

    def __init__(self, clf: Any, call_cost_tokens: int = 0, max_rows: int = 0) -> None:
        self.onnx = clf
        self.labels, self.sha256 = clf.labels, clf.sha256
        self.bucketed = (BucketedClassifier(clf, call_cost_tokens, max_rows)
                         if call_cost_tokens and max_rows else None)

    def warm_up(self) -> None:
        self.answer(["warm up"])

    def answer(self, texts: list[str], timings: Any = None) -> np.ndarray:
        if self.bucketed is not None:
            return self.bucketed.probabilities(texts, timings)
        return softmax(self.onnx.logits(texts)) if texts else np.zeros((0, len(self.labels)))

    def render(self, result: Any) -> dict[str, Any]:
        values = result.tolist()
        best = max(range(len(values)), key=values.__getitem__)
        return {"label": self.labels[best], "score": values[best],
                "scores": dict(zip(self.labels, values, strict=True))}

    def columns(self, texts: list[str], batch_size: int) -> dict[str, list]:
        preds = self.onnx.predict(texts, batch_size=batch_size)
        return {"label": [p.label for p in preds], "score": [p.score for p in preds],
                "scores": [p.scores for p in preds]}


@register_task_type
class SequenceClassification(TaskType):
    name = "sequence_classification"
    metrics = ("accuracy", "macro_f1")
    peft_task_type = "SEQ_CLS"
    unit = "text"

    def check(self, input_path: str | Path, cfg: Any) -> Any:
        from components.data.streaming import check_dataset

        return check_dataset(input_path, cfg)

    def prepare(self, input_path: str | Path, out_dir: str | Path, cfg: Any) -> dict[str, Any]:
        from components.data.streaming import prepare_dataset

        return prepare_dataset(input_path, out_dir, cfg)

    def encode_split(self, tokenizer: Any, prepared_dir: str | Path, split: str,
                     params: Any) -> Any:
        from components.data.files import load_split
        from components.model.encoding import encode

        texts, ids = load_split(prepared_dir, split)
        return encode(tokenizer, texts, ids, params.model.max_length)

    def model_class(self, config: Any, pooling: str) -> type:
        from components.model.pooling import classifier_class

        return classifier_class(config, pooling)

    def finish_model(self, model: Any, pooling: str) -> Any:
        from components.model.pooling import finish_pooling

        return finish_pooling(model, pooling)

    def evaluate(self, trained: Any, prepared_dir: str | Path, out_dir: str | Path,
                 params: Any) -> dict[str, float]:
        from components.evaluate.report import (
            compute_report,
            headline_metrics,
            torch_logits,
            write_report,
        )

        rows = self.parity_rows(prepared_dir)
        if not rows.texts:
            raise ValueError(f"{prepared_dir}/test.jsonl is empty: nothing to evaluate")
        max_length = int(trained.meta.get("max_length", params.model.max_length))
        logits = torch_logits(trained.model, trained.tokenizer, rows.texts, max_length,
                              params.evaluate.batch_size)
        report = compute_report(rows.targets, logits, trained.labels, params.evaluate.ece_bins)
        report.update(split="test", model=model_summary(trained.meta))
        write_report(report, out_dir)
        return headline_metrics(report)

    def split_predictions(self, trained: Any, prepared_dir: str | Path, split: str,
                          params: Any) -> tuple[np.ndarray, np.ndarray]:
        from components.data.files import load_split
        from components.evaluate.report import torch_logits

        texts, y = load_split(prepared_dir, split)
        logits = torch_logits(trained.model, trained.tokenizer, texts,
                              int(trained.meta.get("max_length", params.model.max_length)),
                              params.evaluate.batch_size)
        return np.asarray(y), logits.argmax(axis=1)

    def parity_rows(self, prepared_dir: str | Path) -> ParityRows:
        from components.data.files import load_split

        texts, y = load_split(prepared_dir, "test")
        return ParityRows(texts, y)

    def measure(self, model: Any, bundle: Path, rows: ParityRows, params: Any,
                graph: Any = None) -> dict[str, Any]:
        from components.release.export import measure_bundle

        return measure_bundle(model, bundle, rows.texts, rows.targets, params, graph)

    def score_bundle(self, bundle_dir: Path, prepared_dir: str | Path, params: Any) -> Scores:
        from components.data.files import load_label_map

        rows = self.parity_rows(prepared_dir)
        return self._score(bundle_dir, rows.texts, np.asarray(rows.targets),
                           load_label_map(prepared_dir), params)

    def rescore(self, bundle_dir: Path, like: Scores, params: Any) -> Scores:
        return self._score(bundle_dir, like.inputs, like.targets, like.labels, params)

    def _score(self, bundle_dir: Path, texts: list[str], y: np.ndarray, labels: list[str],
               params: Any) -> Scores:
        from components.evaluate.report import compute_report, headline_metrics
        clf = load_classifier(bundle_dir, threads=params.model.num_threads)
        logits = clf.logits(texts, params.evaluate.batch_size)
        report = compute_report(y, logits, labels, params.evaluate.ece_bins)
        pred = logits.argmax(axis=1)
        k = len(labels)
        items = np.zeros((len(y), k * k), dtype=np.float64)
        items[np.arange(len(y)), y * k + pred] = 1.0
        return Scores(metrics=headline_metrics(report), items=items, correct=pred == y,
                      report=report, labels=labels, timer=clf, texts=texts, inputs=texts,
                      targets=y)

    def metrics_of(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        from components.evaluate.stats import confusion_metrics

        return confusion_metrics(counts)

    def load_runtime(self, bundle_dir: str | Path, *, threads: int, verify: bool = True,
                     session_config: dict[str, str] | None = None,
                     call_cost_tokens: int = 0, max_rows: int = 0) -> SequenceRuntime:
        clf = load_classifier(bundle_dir, threads=threads, verify=verify,
                              session_config=session_config)
        return SequenceRuntime(clf, call_cost_tokens, max_rows)

    def reference(self, bundle_dir: str | Path, prepared_dir: str | Path, params: Any
                  ) -> dict[str, Any] | None:
        from components.evaluate.drift import prediction_distribution

        texts = self.texts(prepared_dir, "test")
        if not texts:
            return None
        clf = load_classifier(bundle_dir, threads=params.serve.threads, verify=False)
        logits = clf.logits(texts, batch_size=params.serve.max_batch)
        return prediction_distribution(logits, clf.labels, params.monitoring.confidence_bins)

    def output_schema(self) -> list[tuple[str, str]] | None:
        return [("label", "string"), ("score", "double"), ("scores", "map<double>")]
