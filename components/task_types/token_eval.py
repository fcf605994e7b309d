"""Evaluation and export parity of token-classification models.

Both score words, never sub-tokens: a word's tag is read on its first sub-token of the
window that sees it best (`components.task_types.tagging`), for the torch model as for the ONNX
graphs, so every number here is about what serving returns.

Report (`paths.eval/report.json`): entity precision / recall / F1 (exact span + type) per
type and micro, macro_f1 (mean per-type F1), token accuracy (words), n sentences.
Parity (`parity.json` in the bundle): torch vs ONNX Runtime fp32 logits on the same
windows, int8 vs fp32 word tags (per word, with the fp32 probability, as for texts) and
entity agreement (sentences whose entities int8 and fp32 find identically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.io import atomic_dir, atomic_write_json, atomic_write_text
from components.task_types.base import model_summary
from components.task_types.tagging import (
    TaggedWords,
    bio_entities,
    entity_report,
    tag_texts,
    window_tokenizer,
)

REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"


def torch_run(model: Any):
    """`model` as a numpy feeds -> logits function (no grad)."""
    import torch

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(feeds["input_ids"]),
                        attention_mask=torch.from_numpy(feeds["attention_mask"]))
        return out.logits.float().numpy()

    return run


def tag_names(tagged: list[TaggedWords], labels: list[str]) -> list[list[str]]:
    return [[labels[t] for t in s.tags] for s in tagged]


def types_of(labels: list[str]) -> list[str]:
    return sorted({t[2:] for t in labels if t != "O"})


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a token report (what gets logged and gated)."""
    return {k: float(report[k]) for k in ("accuracy", "macro_f1", "entity_f1",
                                          "entity_precision", "entity_recall", "n")}


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation report, token classification ({report.get('split', 'test')} "
             f"split, {report['n']} sentences, {report['tokens']} words)", "",
             "| metric | value |", "|---|---|",
             f"| entity F1 (micro, exact span + type) | {report['entity_f1']:.4f} |",
             f"| entity precision | {report['entity_precision']:.4f} |",
             f"| entity recall | {report['entity_recall']:.4f} |",
             f"| macro entity F1 (mean over types) | {report['macro_f1']:.4f} |",
             f"| token accuracy (words) | {report['accuracy']:.4f} |", "",
             "## Per entity type", "", "| type | precision | recall | F1 | support |",
             "|---|---|---|---|---|"]
    for name, s in report["per_type"].items():
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    return "\n".join(lines) + "\n"


def evaluate_token_model(trained: Any, prepared_dir: str | Path, out_dir: str | Path,
                         params: Any) -> dict[str, float]:
    """Score a reloaded token model on the test split; write report.json and report.md."""
    from components.data.files import load_label_map
    from components.task_types.token_data import load_token_split

    labels = load_label_map(prepared_dir)
    if trained.labels != labels:
        raise ValueError(f"model tags {trained.labels} differ from the prepared tag set "
                         f"{labels} in {prepared_dir}")
    words, gold = load_token_split(prepared_dir, "test")
    if not words:
        raise ValueError(f"{prepared_dir}/test.jsonl is empty: nothing to evaluate")
    tagger = window_tokenizer(trained.tokenizer.backend_tokenizer,
                              int(trained.meta["max_length"]), int(trained.meta["stride"]))
    tagged = tag_texts(tagger, torch_run(trained.model), words, params.evaluate.batch_size,
                       int(trained.tokenizer.pad_token_id or 0), pretokenized=True)
    report = entity_report([[labels[t] for t in g] for g in gold], tag_names(tagged, labels),
                           types_of(labels))
    report.update(split="test", task="token_classification", labels=labels,
                  model=model_summary(trained.meta))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / REPORT_FILE, report)
        atomic_write_text(tmp / MARKDOWN_FILE, render_markdown(report))
    return headline(report)


class EntityTimer:
    """A tagger as `export.latency_ms` measures it: texts in, entities out."""

    def __init__(self, tagger: Any) -> None:
        self.tagger = tagger

    def logits(self, texts: list[str], batch_size: int) -> Any:
        return self.tagger.entities(texts, batch_size)


def measure_token_bundle(model: Any, bundle: Path, words: list[list[str]],
                         gold: list[list[int]], params: Any, graph: Any = None
                         ) -> dict[str, Any]:
    """Parity of torch / ORT fp32 / the int8 `graph` (default: the served one) on the test
    sentences, then sizes and latency."""
    from components.release.export import latency_ms
    from components.release.predictor import FP32_MODEL, graph_size_mb, served_graph
    from components.task_types.tagging import OnnxTagger

    threads, bs = params.model.num_threads, params.evaluate.batch_size
    graph = graph or served_graph(bundle)
    fp32 = OnnxTagger(bundle, FP32_MODEL, threads=threads, verify=False)
    int8 = OnnxTagger(bundle, graph, threads=threads, verify=False)
    recorded: list[np.ndarray] = []
    diffs: list[float] = []

    def torch_recording(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = torch_run(model)(feeds)
        recorded.append(out)
        return out

    def fp32_compared(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = fp32.run(feeds)
        mask = feeds["attention_mask"].astype(bool)
        diffs.append(float(np.abs(recorded[len(diffs)] - out)[mask].max()))
        return out

    tag_texts(fp32.tokenizer, torch_recording, words, bs, fp32.pad_id, pretokenized=True)
    by_fp32 = tag_texts(fp32.tokenizer, fp32_compared, words, bs, fp32.pad_id, True)
    by_int8 = int8.tag(words, bs, pretokenized=True)
    labels = fp32.labels
    result = token_parity(gold, by_fp32, by_int8, labels)
    result["max_logit_diff"] = max(diffs)
    alone = [int8.tag([w], 1, pretokenized=True)[0] for w in words]
    result["int8_agreement_b1"] = float(np.mean(
        [a == b for x, y in zip(alone, by_fp32, strict=True)
         for a, b in zip(x.tags, y.tags, strict=True)]))
    fp32_mb = (bundle / FP32_MODEL).stat().st_size / 2**20
    int8_mb = graph_size_mb(bundle, graph)
    result.update(size_mb_fp32=fp32_mb, size_mb_int8=int8_mb, size_ratio=int8_mb / fp32_mb)
    texts = [" ".join(w) for w in words]
    for name, tagger in (("fp32", fp32), ("int8", int8)):
        for batch_size in (1, 32):
            lat = latency_ms(EntityTimer(tagger), texts, batch_size, params.export.latency_repeats)
            for key, value in lat.items():
                result[f"{name}_b{batch_size}_{key}"] = value
    return result


def token_parity(gold: list[list[int]], fp32: list[TaggedWords], int8: list[TaggedWords],
                 labels: list[str]) -> dict[str, Any]:
    """int8 vs fp32 per word (the rows the gate's int8 rules read) and per entity."""
    y = np.asarray([t for g in gold for t in g])
    fp32_pred = np.asarray([t for s in fp32 for t in s.tags])
    int8_pred = np.asarray([t for s in int8 for t in s.tags])
    confidence = np.asarray([p for s in fp32 for p in s.scores])
    flipped = fp32_pred != int8_pred
    types = types_of(labels)
    gold_names = [[labels[t] for t in g] for g in gold]
    f_names, i_names = tag_names(fp32, labels), tag_names(int8, labels)
    same = [set(bio_entities(a)) == set(bio_entities(b))
            for a, b in zip(f_names, i_names, strict=True)]
    return {"rows": int(len(y)), "sentences": len(gold),
            "int8_disagreements": int(flipped.sum()),
            "int8_flip_max_fp32_probability": (float(confidence[flipped].max())
                                               if flipped.any() else 0.0),
            "accuracy_fp32": float(np.mean(fp32_pred == y)),
            "accuracy_int8": float(np.mean(int8_pred == y)),
            "int8_agreement": float(np.mean(~flipped)),
            "int8_accuracy_drop": float(np.mean(fp32_pred == y) - np.mean(int8_pred == y)),
            "entity_f1_fp32": entity_report(gold_names, f_names, types)["entity_f1"],
            "entity_f1_int8": entity_report(gold_names, i_names, types)["entity_f1"],
            "int8_entity_agreement": float(np.mean(same)),
            "per_row": {"y": y.tolist(), "fp32_pred": fp32_pred.tolist(),
                        "int8_pred": int8_pred.tolist(),
                        "fp32_probability": [round(float(p), 5) for p in confidence]}}
