"""The evaluation gate: decide whether an exported bundle may replace the @champion.

Every rule is reported as {name, value, threshold, op, passed}. The rules (all numbers from
the `gate:` section of params.yaml):
  - min.<metric>            challenger (its served int8 graph) metric on the test split
  - vs_champion.<metric>    change against the champion, re-scored on the SAME test split
                            (stored numbers from older data are not comparable). Noise can
                            only make the gate stricter, never looser:
                              a measured drop beyond max_drop_vs_champion  -> reject
                              a significant drop, even inside that allowance -> reject
                              compare: non_inferiority -> also reject unless the lower end
                                of the paired interval of (challenger - champion) is above
                                -non_inferiority_margin; when it is not, the verdict says
                                how many test rows would settle it
                            The paired bootstrap interval is always reported; "significant"
                            means that interval excludes 0 (`bootstrap`) or an exact McNemar
                            test on paired correctness (`mcnemar`), at gate.noise.confidence.
  - int8_confident_flips      int8 never flips a prediction fp32 made with probability
                            >= int8_confident_probability (near-tie flips are reported only)
  - int8_accuracy_change     int8 - fp32 accuracy on the test split, judged like the
                            champion comparison (allowed drop, then significance)
  - max_logit_diff                                        from the export's parity.json
  - latency_p95_ms (served graph, batch 1, tokenize + run, measured here), size_mb (its
    files)
The first model (no champion) is judged on the absolute rules only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from components.config import GATED_METRICS, GateConfig, Params
from components.evaluate.plots import write_gate_plots
from components.evaluate.stats import (
    histogram,
    interval,
    mcnemar_pvalue,
    paired_bootstrap_draws,
)
from components.io import atomic_write_json, atomic_write_text, read_json
from components.release.predictor import (
    PARITY_FILE,
    graph_size_mb,
    latency_ms,
    served_graph,
    verify_bundle,
)
from components.release.rules import int8_rules, make_rule
from components.task_types import Scores, TaskType, task_type
from components.task_types.base import DEFAULT as DEFAULT_TASK

VERDICT_FILE = "verdict.json"


def judge_delta(metric: str, delta: float, lo: float, hi: float, n: int,
                pvalue: float | None, cfg: GateConfig) -> dict[str, Any]:
    """One vs_champion.<metric> rule from the measured change and its paired interval."""
    noise, max_drop = cfg.noise, cfg.max_drop_vs_champion[metric]
    detail: dict[str, Any] = {"method": noise.method, "confidence": noise.confidence,
                              "ci_low": lo, "ci_high": hi, "n": int(n)}
    if pvalue is not None:
        detail["p_value"] = pvalue
        significant_drop = delta < 0 and pvalue < 1.0 - noise.confidence
    else:
        significant_drop = hi < 0
    if delta < -max_drop:
        outcome, passed = "drop beyond the allowed drop", False
    elif significant_drop:
        outcome, passed = "significant drop", False
    elif cfg.compare == "non_inferiority":
        margin = cfg.non_inferiority_margin[metric]
        detail["margin"] = margin
        passed = lo > -margin
        outcome = "non-inferior" if passed else "undecided: interval reaches below -margin"
        if not passed:
            detail["rows_needed"] = rows_needed(n, lo, hi, delta, margin)
    else:
        outcome, passed = ("better" if lo > 0 else "no measured drop"), True
    return make_rule(f"vs_champion.{metric}", delta, 0.0 - max_drop, ">=", passed,
                     outcome=outcome, **detail)


def rows_needed(n: int, lo: float, hi: float, delta: float, margin: float) -> int | None:
    """Test rows for the interval's lower end to clear -margin at the same measured delta.

    The interval's half-width shrinks as 1/sqrt(n); None when the measured delta is itself
    at or below -margin (more rows would only confirm it).
    """
    room = delta + margin
    if room <= 0:
        return None
    half = max((hi - lo) / 2, 1e-12)
    return int(math.ceil(n * (half / room) ** 2))


def export_rules(parity: dict[str, Any], latency_p95: float, size_mb: float,
                 cfg: GateConfig) -> list[dict[str, Any]]:
    """int8 vs fp32 (judged on confident rows, accuracy change noise-aware), ORT-vs-torch
    logit difference, latency and size budgets."""
    return [*int8_rules(parity, cfg),
            make_rule("max_logit_diff", parity["max_logit_diff"], cfg.max_logit_diff, "<="),
            make_rule("latency_p95_ms", latency_p95, cfg.max_latency_p95_ms, "<="),
            make_rule("size_mb", size_mb, cfg.max_size_mb, "<=")]


def describe_failure(rule: dict[str, Any]) -> str:
    """A one-line human reason for a failed rule."""
    fail_op = "<" if rule["op"] == ">=" else ">"
    value = f"{rule['value']:+.4g}" if "ci_low" in rule else f"{rule['value']:.4g}"
    text = f"{rule['name']} = {value} {fail_op} {rule['threshold']:.4g}"
    if rule.get("outcome"):
        text += f" ({rule['outcome']}{_interval(rule)})"
    return text


def _interval(rule: dict[str, Any]) -> str:
    if "ci_low" not in rule:
        return ""
    text = (f"; {rule['confidence']:.0%} paired interval [{rule['ci_low']:+.4f}, "
            f"{rule['ci_high']:+.4f}] on {rule['n']} rows")
    if rule.get("rows_needed"):
        text += f"; about {rule['rows_needed']} test rows would settle it"
    return text


def decision_line(verdict: dict[str, Any]) -> str:
    """One line: the verdict, and the rule(s) that decided it."""
    if not verdict["passed"]:
        return "REJECTED: " + "; ".join(verdict["reasons"])
    if verdict.get("first_model"):
        return "PASSED (first model: absolute rules only)"
    vs = [r for r in verdict["rules"] if r["name"].startswith("vs_champion")]
    return "PASSED: " + "; ".join(f"{r['name']} {r['value']:+.4f} ({r['outcome']}"
                                  f"{_interval(r)})" for r in vs)


def champion_rules(challenger: Scores, champion: Scores, task: TaskType, cfg: GateConfig
                   ) -> list[dict[str, Any]]:
    """The vs_champion.<metric> rules: both models scored on the same test items."""
    noise = cfg.noise
    pvalue = (mcnemar_pvalue(challenger.correct, champion.correct)
              if noise.method == "mcnemar" else None)
    names = [m for m in cfg.max_drop_vs_champion if m in task.metrics]
    draws = paired_bootstrap_draws(challenger.items, champion.items, task.metrics_of, names,
                                   noise)
    ours = task.metrics_of(challenger.items.sum(0))
    theirs = task.metrics_of(champion.items.sum(0))
    # The distribution (as a histogram) travels with the rule: the gate's plot draws it.
    return [{**judge_delta(m, float(ours[m] - theirs[m]), *interval(draws[m], noise.confidence),
                           len(challenger.items), pvalue, cfg),
             "bootstrap": histogram(draws[m])} for m in names]


def compare_to_champion(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
                        num_labels: int, cfg: GateConfig) -> list[dict[str, Any]]:
    """`champion_rules` for two label predictions of the same rows (one label per text)."""
    task = task_type(DEFAULT_TASK)

    def scores(pred: np.ndarray) -> Scores:
        items = np.zeros((len(y), num_labels * num_labels))
        items[np.arange(len(y)), np.asarray(y) * num_labels + np.asarray(pred)] = 1.0
        return Scores(metrics={}, items=items, correct=np.asarray(pred) == np.asarray(y),
                      report={}, labels=[], timer=None)

    return champion_rules(scores(challenger), scores(champion), task, cfg)


def run_gate(bundle_dir: str | Path, prepared_dir: str | Path, params: Params,
             champion_bundle_dir: str | Path | None = None, *,
             out_dir: str | Path | None = None) -> dict[str, Any]:
    """Judge the challenger bundle; compare it with the champion bundle when one is given.

    The task type (`params.task.type`) scores both bundles on the test split; the rules,
    the paired statistics and the verdict are the same for every task.

    A changed label set cannot be compared item by item; it is a deliberate change that a
    human approves (`tuneline promote`), so it fails the gate with that reason.

    Returns:
        {"passed", "rules", "reasons", "metrics", "champion_metrics", "first_model", "report",
        "champion_report"} and, when `out_dir` is given, also writes verdict.json,
        verdict.md and the plots there.

    Raises:
        BundleIntegrityError: a bundle file is missing or fails its sha256 check.
        ValueError: a gated metric name is unknown.
    """
    cfg = params.gate
    task = task_type(params.task.type)
    bundle_dir = Path(bundle_dir)
    scores = task.score_bundle(bundle_dir, prepared_dir, params)
    rules = [make_rule(f"min.{m}", scores.metrics[m], t, ">=")
             for m, t in cfg.min_metrics.items() if m in task.metrics]
    verify_bundle(bundle_dir, [PARITY_FILE])
    latency = latency_ms(scores.timer, scores.texts, 1, params.export.latency_repeats)["p95_ms"]
    size_mb = graph_size_mb(bundle_dir, served_graph(bundle_dir))
    rules += export_rules(read_json(bundle_dir / PARITY_FILE), latency, size_mb, cfg)
    champion_metrics = champion_report = None
    if champion_bundle_dir is not None:
        champion_dir = Path(champion_bundle_dir)
        champ_labels = read_json(champion_dir / "labels.json")["labels"]
        if champ_labels != scores.labels:
            rules.append(make_rule("same_labels_as_champion", 0, 1, ">=",
                                   champion_labels=champ_labels,
                                   outcome="label set changed: promote by hand if intended"))
        else:
            champion = task.rescore(champion_dir, scores, params)
            rules += champion_rules(scores, champion, task, cfg)
            champion_metrics, champion_report = champion.metrics, champion.report
    verdict = {"passed": all(r["passed"] for r in rules), "rules": rules,
               "reasons": [describe_failure(r) for r in rules if not r["passed"]],
               "metrics": scores.metrics, "champion_metrics": champion_metrics,
               "first_model": champion_bundle_dir is None, "report": scores.report,
               "champion_report": champion_report}
    if out_dir is not None:
        write_verdict(verdict, out_dir)
    return verdict


def render_verdict(verdict: dict[str, Any]) -> str:
    """The verdict as Markdown: challenger vs champion, then every rule."""
    head = "PASSED" if verdict["passed"] else "REJECTED"
    kind = "first model: absolute rules only" if verdict["first_model"] else "vs @champion"
    lines = [f"# Gate {head} ({kind})", "", decision_line(verdict), ""]
    champion = verdict.get("champion_metrics")
    if champion:
        lines += ["| test split | challenger | champion |", "|---|---|---|"]
        lines += [f"| {m} | {verdict['metrics'][m]:.4f} | {champion[m]:.4f} |"
                  for m in GATED_METRICS if m in champion and m in verdict["metrics"]]
        lines.append("")
    lines += ["| rule | value | threshold | pass | detail |", "|---|---|---|---|---|"]
    for r in verdict["rules"]:
        detail = (r.get("outcome", "") + _interval(r)).lstrip("; ")
        lines.append(f"| {r['name']} | {r['value']:.4g} | {r['op']} {r['threshold']:.4g} | "
                     f"{'yes' if r['passed'] else 'NO'} | {detail} |")
    return "\n".join(lines) + "\n"


def write_verdict(verdict: dict[str, Any], out_dir: str | Path) -> Path:
    """verdict.json + verdict.md and the gate's plots (per-class F1, bootstrap
    distributions) in `out_dir` (each written atomically)."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / VERDICT_FILE, verdict)
    atomic_write_text(out_dir / "verdict.md", render_verdict(verdict))
    write_gate_plots(verdict, out_dir)
    return out_dir / VERDICT_FILE
