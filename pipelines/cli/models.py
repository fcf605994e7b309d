"""`tuneline evaluate | export | gate | register | promote | rollback | models`.

Thin shells over components.evaluate / export / gate / registry: every path and threshold
comes from params.yaml (overridable with --set), outputs go where the DVC stages expect.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit

ModelOpt = Annotated[Path | None, typer.Option(help="Model folder (default: paths.model).")]
DataOpt = Annotated[Path | None, typer.Option(help="Prepared data (default: paths.prepared).")]
BundleOpt = Annotated[Path | None, typer.Option(
    "--bundle", help="ONNX bundle folder (default: paths.export).")]


@app.command("evaluate")
def evaluate(model: ModelOpt = None, data: DataOpt = None,
             out: Annotated[Path | None, typer.Option(help="Report folder (default: "
                                                            "paths.eval).")] = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Score the trained model on the test split; write report.json/.md and the plot."""
    from components.evaluate import evaluate_model

    p = params_or_exit(params, set_)
    out_dir = out or p.paths.eval
    try:
        m = evaluate_model(model or p.paths.model, data or p.paths.prepared, out_dir, p)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
               f"ECE {m['ece']:.4f}  (n={int(m['n'])}) -> {out_dir}")


@app.command("export")
def export(model: ModelOpt = None, data: DataOpt = None, out: BundleOpt = None,
           params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Export ONNX fp32 + int8 with tokenizer and labels; measure parity, size, latency."""
    from components.export import export_bundle

    p = params_or_exit(params, set_)
    out_dir = out or p.paths.export
    try:
        r = export_bundle(model or p.paths.model, data or p.paths.prepared, out_dir, p)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"bundle -> {out_dir}\n"
               f"  torch vs ORT fp32 max |logit diff| {r['max_logit_diff']:.2e}\n"
               f"  int8 agreement {r['int8_agreement']:.4f}, accuracy fp32 "
               f"{r['accuracy_fp32']:.4f} int8 {r['accuracy_int8']:.4f}\n"
               f"  size fp32 {r['size_mb_fp32']:.1f} MB, int8 {r['size_mb_int8']:.1f} MB "
               f"({r['size_ratio']:.2f}x)\n"
               f"  batch-1 p50 fp32 {r['fp32_b1_p50_ms']:.2f} ms, int8 "
               f"{r['int8_b1_p50_ms']:.2f} ms")


@app.command("gate")
def gate(bundle: BundleOpt = None, data: DataOpt = None,
         strict: Annotated[bool, typer.Option(help="Exit 1 when rejected (default: "
                                                   "gate.fail_run_on_reject).")] = False,
         params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Judge the bundle against the rules and the re-scored @champion; write verdict.json."""
    from components.gate import render_verdict, run_gate
    from components.registry import champion_bundle

    p = params_or_exit(params, set_)
    with tempfile.TemporaryDirectory() as tmp:
        champ = champion_bundle(p, Path(tmp) / "champion")
        try:
            verdict = run_gate(bundle or p.paths.export, data or p.paths.prepared, p, champ,
                               out_dir=p.paths.gate)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            fail(str(exc))
    typer.echo(render_verdict(verdict).rstrip())
    if not verdict["passed"] and (strict or p.gate.fail_run_on_reject):
        raise typer.Exit(1)


@app.command("register")
def register(bundle: BundleOpt = None, data: DataOpt = None,
             run_id: Annotated[str | None, typer.Option(
                 help="MLflow run to attach to (default: a new run with params, lineage, "
                      "evaluation report and parity).")] = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Register the bundle with the last gate verdict; move @champion or @challenger."""
    from components import tracking
    from components.gate import VERDICT_FILE
    from components.io import read_json
    from components.registry import publish

    p = params_or_exit(params, set_)
    verdict_path = Path(p.paths.gate) / VERDICT_FILE
    if not verdict_path.exists():
        fail(f"{verdict_path} is missing: run `tuneline gate` first")
    bundle_dir = Path(bundle or p.paths.export)
    new_run = run_id is None
    if new_run:
        run_id = tracking.start_run(p, data or p.paths.prepared)
        eval_report = Path(p.paths.eval) / "report.json"
        if eval_report.exists():
            tracking.log_stage(p, run_id, "test", _scalars(read_json(eval_report)),
                               p.paths.eval)
        tracking.log_stage(p, run_id, "export", _scalars(read_json(bundle_dir / "parity.json")))
    result = publish(p, run_id, bundle_dir, read_json(verdict_path))
    if new_run:
        tracking.end_run(p, run_id)
    verdict = "passed" if result["passed"] else "rejected"
    typer.echo(f"registered {p.registry.model_name} v{result['version']} (gate {verdict}): "
               f"{', '.join(result['moves'])}")


def _scalars(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="Version number to make @champion.")],
            reason: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "",
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Human override: make VERSION the @champion (recorded as a manual promotion)."""
    from components.registry import promote as promote_version

    p = params_or_exit(params, set_)
    try:
        result = promote_version(p, version, reason)
    except LookupError as exc:
        fail(str(exc))
    typer.echo(f"promoted v{result['version']} by hand: {', '.join(result['moves'])}")


@app.command("rollback")
def rollback(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Make the @previous version the @champion again."""
    from components.registry import rollback as rollback_champion

    p = params_or_exit(params, set_)
    try:
        result = rollback_champion(p)
    except LookupError as exc:
        fail(str(exc))
    typer.echo(f"rolled back: v{result['demoted']} -> v{result['version']} "
               f"({', '.join(result['moves'])})")


@app.command("models")
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
           params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """List registered versions with aliases, test metrics and gate verdicts."""
    from components.registry import list_versions

    p = params_or_exit(params, set_)
    rows = list_versions(p)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no versions of {p.registry.model_name} registered yet")
        return
    typer.echo(f"{'ver':>4}  {'aliases':<22} {'acc':>6} {'F1':>6}  {'gate':<8} {'created':<19}  "
               "notes")
    for r in rows:
        t = r["tags"]
        gate_text = {"true": "passed", "false": "rejected"}.get(t.get("gate_passed", ""), "?")
        notes = [f"manual promotion ({t.get('promotion_reason', '-')})"] \
            if t.get("promotion") == "manual" else []
        if t.get("gate_reasons"):
            notes.append(t["gate_reasons"])
        if t.get("rolled_back_at"):
            notes.append(f"rolled back {t['rolled_back_at']}")
        aliases = " ".join("@" + a for a in r["aliases"]) or "-"
        typer.echo(f"{r['version']:>4}  {aliases:<22} {t.get('test_accuracy', '-'):>6} "
                   f"{t.get('test_macro_f1', '-'):>6}  {gate_text:<8} {r['created']:<19}  "
                   f"{'; '.join(notes)}")
