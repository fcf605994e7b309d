"""The model card of a release: one Markdown page a reviewer reads before trusting a version.

Written at registration from what the chain already measured (the prepared data's report,
the test report, the export's int8 parity, the gate's verdict) and the version's lineage
tags; it travels with the version's own LoggedModel (`reports/card/model_card.md`), is
printed by `tuneline models show N --card`, and is published as a Prefect artifact.
Pure: no torch, no MLflow.
"""

from __future__ import annotations

from typing import Any

CARD_FOLDER = "card"
CARD_FILE = "model_card.md"
FEW_EXAMPLES = 20  # a class with fewer test rows than this gets a limitation line
HIGH_ECE = 0.05  # calibration error above this gets a limitation line


def render_model_card(*, name: str, version: str | None, task: str, data: dict[str, Any],
                      report: dict[str, Any], parity: dict[str, Any],
                      verdict: dict[str, Any], lineage: dict[str, str],
                      training: dict[str, Any]) -> str:
    """The card as Markdown. `data` is the prepared folder's report.json, `report` the test
    report, `parity` the export's parity.json, `verdict` the gate's, `lineage` the version
    tags, `training` a few settings (strategy, PEFT method, backbone, steps)."""
    title = f"{name} v{version}" if version else name
    status = "passed the gate" if verdict.get("passed") else "rejected by the gate"
    out = [f"# Model card: {title}", "",
           f"{task.replace('_', ' ')} model, {status}.", ""]
    out += ["## Intended use", "",
            f"Assigns one of {len(report.get('labels', []))} labels "
            f"({', '.join(map(str, report.get('labels', [])))}) to a text like those it was "
            "trained on. Not meant for texts from another domain or language without "
            "retraining: the gate measured it on a held-out split of the same data only.", ""]
    out += _data_section(data, lineage)
    out += ["## Training", "", "| setting | value |", "|---|---|"]
    out += [f"| {k} | `{v}` |" for k, v in training.items()]
    out.append("")
    out += _metrics_section(report, parity)
    out += _gate_section(verdict)
    out += _limitations(report, data)
    out += ["## Lineage", "", "| tag | value |", "|---|---|"]
    out += [f"| {k} | `{v}` |" for k, v in sorted(lineage.items())]
    return "\n".join(out).rstrip() + "\n"


def _data_section(data: dict[str, Any], lineage: dict[str, str]) -> list[str]:
    sizes = data.get("split_sizes", {})
    out = ["## Data", "",
           f"- source: `{lineage.get('raw_source', data.get('input', '?'))}` "
           f"(md5 `{lineage.get('raw_data_hash', '?')}`)",
           f"- prepared splits (DVC hash `{lineage.get('data_version', '?')}`): "
           + ", ".join(f"{s} {n}" for s, n in sizes.items()),
           f"- rows: {data.get('rows_in', '?')} read, {data.get('rows_ok', '?')} kept, "
           f"{data.get('bad_fraction', 0):.1%} quarantined"]
    near = data.get("near_duplicates") or {}
    if near:
        out.append(f"- rows with a near-duplicate in another split: {near.get('rows', 0)} "
                   f"(Jaccard >= {near.get('threshold', '?')})")
    counts = data.get("class_counts") or {}
    if counts:
        out += ["", "| class | " + " | ".join(counts) + " |",
                "|---|" + "---|" * len(counts)]
        labels = sorted({label for split in counts.values() for label in split})
        for label in labels:
            out.append(f"| {label} | "
                       + " | ".join(str(counts[s].get(label, 0)) for s in counts) + " |")
    out.append("")
    return out


def _metrics_section(report: dict[str, Any], parity: dict[str, Any]) -> list[str]:
    out = ["## Metrics on the test split", "",
           f"n = {report.get('n', '?')}: accuracy {report.get('accuracy', float('nan')):.4f}, "
           f"macro-F1 {report.get('macro_f1', float('nan')):.4f}, "
           f"expected calibration error {report.get('ece', float('nan')):.4f}", ""]
    per_class = report.get("per_class") or {}
    if per_class:
        out += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        out += [f"| {c} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                f"{s['support']} |" for c, s in per_class.items()]
        out.append("")
    if parity:
        shown = {k: v for k, v in parity.items() if isinstance(v, int | float)}
        out += ["Served int8 ONNX against the trained model: "
                + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), ""]
    return out


def _gate_section(verdict: dict[str, Any]) -> list[str]:
    out = ["## Gate", "", "| rule | value | threshold | passed | interval |",
           "|---|---|---|---|---|"]
    for rule in verdict.get("rules", []):
        interval = (f"[{rule['ci_low']:+.4f}, {rule['ci_high']:+.4f}]"
                    if "ci_low" in rule else "")
        out.append(f"| {rule['name']} | {rule['value']:.4g} | {rule['op']} "
                   f"{rule['threshold']:.4g} | {'yes' if rule['passed'] else 'no'} | "
                   f"{interval} |")
    if verdict.get("reasons"):
        out += ["", "Rejected: " + "; ".join(verdict["reasons"])]
    out.append("")
    return out


def _limitations(report: dict[str, Any], data: dict[str, Any]) -> list[str]:
    lines = []
    for label, scores in (report.get("per_class") or {}).items():
        if scores.get("support", 0) < FEW_EXAMPLES:
            lines.append(f"- `{label}` has {scores['support']} test rows: its scores are "
                         "uncertain")
    if report.get("ece", 0) > HIGH_ECE:
        lines.append(f"- calibration error {report['ece']:.3f}: scores are not "
                     "probabilities to threshold on without recalibration")
    near = (data.get("near_duplicates") or {}).get("rows", 0)
    if near:
        lines.append(f"- {near} test/validation rows have a near-duplicate in train: the "
                     "test scores may be optimistic")
    return ["## Limitations", "", *(lines or ["- none measured"]), ""]
