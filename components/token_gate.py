"""The gate for token-classification bundles: the same rules, scored on entities.

min.<metric> and vs_champion.<metric> read the metrics a token task defines (word
accuracy, mean per-type entity F1, micro entity F1; `config.TASK_METRICS`). Against the
champion the comparison is paired over sentences: each bootstrap resample draws test
sentences with replacement and re-scores both models on the same draw (entity F1 does not
decompose over words, so sentences are the unit). `mcnemar` tests paired sentence
correctness (every word tag right). The int8, logit, latency and size rules are those of
texts, read from the bundle's parity.json (int8 vs fp32 per word).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.config import TASK_METRICS, NoiseConfig, Params
from components.gate import (
    describe_failure,
    export_rules,
    judge_delta,
    make_rule,
    mcnemar_pvalue,
    write_verdict,
)
from components.io import read_json
from components.tagging import entity_report, metrics_from_counts, sentence_counts

METRICS = TASK_METRICS["token_classification"]


def _counts(gold: list[list[str]], pred: list[list[str]], types: list[str]) -> np.ndarray:
    return np.array([sentence_counts(g, p, types) for g, p in zip(gold, pred, strict=True)]
                    ).reshape(len(gold), 2 + 3 * len(types))


def _tag(bundle: Path, words: list[list[str]], params: Params) -> list[list[str]]:
    from components.tagging import OnnxTagger

    tagger = OnnxTagger(bundle, threads=params.model.num_threads)
    tagged = tagger.tag(words, params.evaluate.batch_size, pretokenized=True)
    return [[tagger.labels[t] for t in s.tags] for s in tagged]


def bootstrap_sentences(a: np.ndarray, b: np.ndarray, cfg: NoiseConfig
                        ) -> dict[str, tuple[float, float]]:
    """Paired bootstrap CI of metric(a) - metric(b) per metric, resampling sentences."""
    n = len(a)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, n, size=(cfg.resamples, n))
    weights = np.zeros((cfg.resamples, n))
    np.add.at(weights, (np.arange(cfg.resamples)[:, None], idx), 1.0)
    ma, mb = metrics_from_counts(weights @ a), metrics_from_counts(weights @ b)
    alpha = 1.0 - cfg.confidence
    out = {}
    for m in METRICS:
        lo, hi = np.quantile(ma[m] - mb[m], [alpha / 2, 1 - alpha / 2])
        out[m] = (float(lo), float(hi))
    return out


def champion_rules(champion: Path, words: list[list[str]], gold: list[list[str]],
                   challenger: np.ndarray, challenger_pred: list[list[str]],
                   labels: list[str], types: list[str], params: Params
                   ) -> tuple[list[dict[str, Any]], dict[str, float] | None]:
    """vs_champion rules for the metrics both the config and the task name."""
    champ_labels = read_json(champion / "labels.json")["labels"]
    if champ_labels != labels:
        return [make_rule("same_labels_as_champion", 0, 1, ">=", champion_labels=champ_labels,
                          outcome="tag set changed: promote by hand if intended")], None
    champ_pred = _tag(champion, words, params)
    champ = _counts(gold, champ_pred, types)
    noise = params.gate.noise
    pvalue = None
    if noise.method == "mcnemar":
        right = np.array([p == g for p, g in zip(challenger_pred, gold, strict=True)])
        champ_right = np.array([p == g for p, g in zip(champ_pred, gold, strict=True)])
        pvalue = mcnemar_pvalue(right, champ_right)
    ci = bootstrap_sentences(challenger, champ, noise)
    ours, theirs = metrics_from_counts(challenger.sum(0)), metrics_from_counts(champ.sum(0))
    rules = [judge_delta(m, float(ours[m] - theirs[m]), *ci[m], len(gold), pvalue, params.gate)
             for m in params.gate.max_drop_vs_champion if m in METRICS]
    return rules, {m: float(theirs[m]) for m in METRICS} | {"n": float(len(gold))}


def run_token_gate(bundle_dir: Path, prepared_dir: str | Path, params: Params,
                   champion_bundle_dir: str | Path | None = None, *,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """`gate.run_gate` for a token-classification bundle (same verdict shape)."""
    from components.data_io import load_label_map
    from components.export import PARITY_FILE, latency_ms
    from components.predictor import INT8_MODEL, verify_bundle
    from components.tagging import OnnxTagger
    from components.token_data import load_token_split
    from components.token_eval import EntityTimer, types_of

    cfg = params.gate
    labels = load_label_map(prepared_dir)
    types = types_of(labels)
    words, gold_ids = load_token_split(prepared_dir, "test")
    gold = [[labels[t] for t in g] for g in gold_ids]
    pred = _tag(bundle_dir, words, params)
    counts = _counts(gold, pred, types)
    totals = metrics_from_counts(counts.sum(0))
    metrics = {m: float(totals[m]) for m in METRICS} | {"n": float(len(gold))}
    rules = [make_rule(f"min.{m}", metrics[m], t, ">=")
             for m, t in cfg.min_metrics.items() if m in METRICS]
    verify_bundle(bundle_dir, [PARITY_FILE])
    tagger = OnnxTagger(bundle_dir, threads=params.model.num_threads)
    texts = [" ".join(w) for w in words]
    latency = latency_ms(EntityTimer(tagger), texts, 1, params.export.latency_repeats)["p95_ms"]
    size_mb = (bundle_dir / INT8_MODEL).stat().st_size / 2**20
    rules += export_rules(read_json(bundle_dir / PARITY_FILE), latency, size_mb, cfg)
    champion_metrics = None
    if champion_bundle_dir is not None:
        champ_rules, champion_metrics = champion_rules(
            Path(champion_bundle_dir), words, gold, counts, pred, labels, types, params)
        rules += champ_rules
    verdict = {"passed": all(r["passed"] for r in rules), "rules": rules,
               "reasons": [describe_failure(r) for r in rules if not r["passed"]],
               "metrics": metrics, "champion_metrics": champion_metrics,
               "first_model": champion_bundle_dir is None,
               "report": entity_report(gold, pred, types)}
    if out_dir is not None:
        write_verdict(verdict, out_dir)
    return verdict
