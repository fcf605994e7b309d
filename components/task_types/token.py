"""Token classification (named entities): one BIO tag per word.

Data: words + tags per sentence, JSONL or CoNLL (`token_data`). Model: the backbone with a
per-token head; long sentences are cut into overlapping windows (`task.stride`) and a
word's tag is read on its first sub-token in the window that sees it best (`tagging`).
Metrics: exact-span entity F1 (micro), mean per-type entity F1 (`macro_f1`), word
accuracy. Gate items: one sentence each, counted as (correct words, words, then true
positives / predicted / gold entities per type), because entity F1 does not decompose over
words. Serving: entities {type, text, start, end, score} with character offsets; no class
distribution, so no drift reference. Distillation and the pretraining guard's probe (both
score one label per text) do not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.task_types.base import ParityRows, Runtime, Scores, TaskType, register_task_type
from components.task_types.tagging import OnnxTagger


class TokenRuntime(Runtime):
    """An int8 tagger bundle; `answer` gives the entities of each text."""

    distribution = False

    def __init__(self, tagger: Any) -> None:
        self.tagger = tagger
        self.onnx = tagger.clf
        self.labels, self.sha256 = tagger.labels, tagger.sha256

    def warm_up(self) -> None:
        self.answer(["warm up"])

    def answer(self, texts: list[str], timings: Any = None) -> list[list[dict]]:
        return self.tagger.entities(texts, max(len(texts), 1))

    def render(self, result: Any) -> dict[str, Any]:
        return {"entities": result}

    def columns(self, texts: list[str], batch_size: int) -> dict[str, list]:
        return {"entities": self.tagger.entities(texts, batch_size)}


@register_task_type
class TokenClassification(TaskType):
    name = "token_classification"
    metrics = ("accuracy", "macro_f1", "entity_f1")
    peft_task_type = "TOKEN_CLS"
    unit = "sentence"

    def check(self, input_path: str | Path, cfg: Any) -> Any:
        from components.task_types.token_data import check_token_dataset

        return check_token_dataset(input_path, cfg)

    def prepare(self, input_path: str | Path, out_dir: str | Path, cfg: Any) -> dict[str, Any]:
        from components.task_types.token_data import prepare_token_dataset

        return prepare_token_dataset(input_path, out_dir, cfg)

    def encode_split(self, tokenizer: Any, prepared_dir: str | Path, split: str,
                     params: Any) -> Any:
        from components.model.encoding import Encoded
        from components.task_types.tagging import label_windows, window_tokenizer
        from components.task_types.token_data import load_token_split

        # Overlapping windows, the first sub-token of a word carrying its tag (`label_windows`).
        words, tags = load_token_split(prepared_dir, split)
        windows = window_tokenizer(tokenizer.backend_tokenizer, params.model.max_length,
                                   params.task.stride)
        ids, labels = label_windows(windows, words, tags)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return Encoded(input_ids=ids, labels=labels, pad_id=pad)

    def model_class(self, config: Any, pooling: str) -> type:
        # pooling does not apply: every token is classified
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
        )

        return MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[type(config)]

    def evaluate(self, trained: Any, prepared_dir: str | Path, out_dir: str | Path,
                 params: Any) -> dict[str, float]:
        from components.task_types.token_eval import evaluate_token_model

        return evaluate_token_model(trained, prepared_dir, out_dir, params)

    def parity_rows(self, prepared_dir: str | Path) -> ParityRows:
        from components.task_types.token_data import load_token_split

        words, tags = load_token_split(prepared_dir, "test")
        return ParityRows([" ".join(w) for w in words], tags, words)

    def measure(self, model: Any, bundle: Path, rows: ParityRows, params: Any,
                graph: Any = None) -> dict[str, Any]:
        from components.task_types.token_eval import measure_token_bundle

        return measure_token_bundle(model, bundle, rows.words or [], rows.targets, params,
                                    graph)

    def score_bundle(self, bundle_dir: Path, prepared_dir: str | Path, params: Any) -> Scores:
        from components.data.files import load_label_map

        rows = self.parity_rows(prepared_dir)
        labels = load_label_map(prepared_dir)
        gold = [[labels[t] for t in g] for g in rows.targets]
        return self._score(bundle_dir, rows.words or [], gold, labels, params)

    def rescore(self, bundle_dir: Path, like: Scores, params: Any) -> Scores:
        return self._score(bundle_dir, like.inputs, like.targets, like.labels, params)

    def _score(self, bundle_dir: Path, words: list[list[str]], gold: list[list[str]],
               labels: list[str], params: Any) -> Scores:
        from components.task_types.tagging import OnnxTagger, entity_report, sentence_counts
        from components.task_types.token_eval import EntityTimer, types_of

        tagger = OnnxTagger(bundle_dir, threads=params.model.num_threads)
        tagged = tagger.tag(words, params.evaluate.batch_size, pretokenized=True)
        pred = [[labels[t] for t in s.tags] for s in tagged]
        types = types_of(labels)
        items = np.array([sentence_counts(g, p, types) for g, p in zip(gold, pred, strict=True)],
                         dtype=np.float64).reshape(len(gold), 2 + 3 * len(types))
        totals = self.metrics_of(items.sum(0))
        metrics = {m: float(totals[m]) for m in self.metrics} | {"n": float(len(gold))}
        correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=bool)
        return Scores(metrics=metrics, items=items, correct=correct,
                      report=entity_report(gold, pred, types), labels=labels,
                      timer=EntityTimer(tagger), texts=[" ".join(w) for w in words],
                      inputs=words, targets=gold)

    def metrics_of(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        from components.task_types.tagging import metrics_from_counts

        return metrics_from_counts(counts)

    def load_runtime(self, bundle_dir: str | Path, *, threads: int, verify: bool = True,
                     session_config: dict[str, str] | None = None,
                     call_cost_tokens: int = 0, max_rows: int = 0) -> TokenRuntime:
        return TokenRuntime(OnnxTagger(bundle_dir, threads=threads, verify=verify,
                                       session_config=session_config))
