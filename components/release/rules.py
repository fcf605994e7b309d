"""Gate rules that need no task type: the rule record, and what int8 may change.

Kept apart from `components.release.gate` so export can judge its int8 candidates with the
gate's own rules without importing the gate's task-type machinery.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.config import GateConfig
from components.evaluate.stats import bootstrap_delta_ci


def make_rule(name: str, value: float, threshold: float, op: str, passed: bool | None = None,
              **detail: Any) -> dict[str, Any]:
    """One gate rule; `passed` defaults to comparing value `op` threshold (">=" or "<=")."""
    if passed is None:
        passed = value >= threshold if op == ">=" else value <= threshold
    return {"name": name, "value": float(value), "threshold": float(threshold), "op": op,
            "passed": bool(passed), **detail}


def int8_rules(parity: dict[str, Any], cfg: GateConfig) -> list[dict[str, Any]]:
    """What int8 may change: never a confident prediction; accuracy not measurably.

    Dynamic int8 sets activation scales per batch, so it flips near-ties (rows the fp32
    model was unsure of) whatever the scheme; those flips are counted and reported, not
    failed. A flip of a row fp32 predicted with probability at least
    `gate.int8_confident_probability` is a broken export. The rule reads probabilities, not
    logit margins: how large logits grow depends on how long the model trained, so a margin
    threshold that fits one model misjudges the next. The accuracy change int8 - fp32 is
    judged like the champion comparison: a measured drop beyond
    `gate.int8_max_accuracy_drop`, or a significant drop, rejects.
    """
    rows = parity["per_row"]
    y, fp32, int8 = (np.asarray(rows[k]) for k in ("y", "fp32_pred", "int8_pred"))
    flipped = fp32 != int8
    confident = np.asarray(rows["fp32_probability"]) >= cfg.int8_confident_probability
    flips = make_rule("int8_confident_flips", int((flipped & confident).sum()), 0, "<=",
                      near_tie_flips=int((flipped & ~confident).sum()),
                      agreement=float(np.mean(~flipped)),
                      confident_probability=cfg.int8_confident_probability)
    delta = float(np.mean(int8 == y) - np.mean(fp32 == y))
    lo, hi = bootstrap_delta_ci(y, int8, fp32, "accuracy", int(max(y.max(), fp32.max(),
                                                                    int8.max())) + 1, cfg.noise)
    detail = {"method": "bootstrap", "confidence": cfg.noise.confidence, "ci_low": lo,
              "ci_high": hi, "n": int(len(y))}
    if -delta > cfg.int8_max_accuracy_drop:
        outcome, passed = "drop beyond the allowed drop", False
    elif hi < 0:
        outcome, passed = "significant drop", False
    else:
        outcome, passed = "no measured drop" if delta >= 0 else "within the allowed drop", True
    drop = make_rule("int8_accuracy_change", delta, -cfg.int8_max_accuracy_drop, ">=", passed,
                     outcome=outcome, **detail)
    return [flips, drop]
