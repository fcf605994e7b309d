"""`tuneline pretrain` and `tuneline finetune`: thin shells over the training components."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit

JsonlOpt = Annotated[Path | None, typer.Option(
    "--log-jsonl", help="Also append every logged metric to this JSONL file.")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics", help="Write the final metrics as JSON here (e.g. for `dvc metrics`).")]


def _quiet_transformers() -> None:
    # The load report lists the newly initialised head on every build: expected, not news.
    import transformers

    transformers.logging.set_verbosity_error()


def _write_metrics(path: Path | None, metrics: dict[str, Any]) -> None:
    if path is not None:
        from components.io import atomic_write_json

        atomic_write_json(path, metrics)


def _logger(path: Path | None, append: bool = False):
    from components.finetune.loggers import JsonlLogger, null_logger

    return JsonlLogger(path, append=append) if path else null_logger


@app.command("pretrain")
def pretrain(
    texts: Annotated[Path | None, typer.Option(
        help="Unlabeled text: .txt (one document per line) or .jsonl with a text field "
             "(default: <paths.corpus>/unlabeled.txt).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Adapted backbone folder (default: paths.pretrained).")] = None,
    log_jsonl: JsonlOpt = None,
    metrics: MetricsOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Masked-LM pretraining on unlabeled text; reports held-out MLM loss before and after.

    With pretrain.enabled false it only writes a marker, so `finetune` uses the backbone.
    """
    from components.io import atomic_dir, atomic_write_json

    p = params_or_exit(params, set_)
    out_dir = out or p.paths.pretrained
    if not p.pretrain.enabled:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / "pretrain_metrics.json", {"enabled": False})
        _write_metrics(metrics, {"enabled": False})
        typer.echo(f"pretraining disabled (pretrain.enabled=false); marker -> {out_dir}")
        return
    from components.data import load_unlabeled
    from components.pretrain import pretrain_mlm

    _quiet_transformers()
    source = texts or p.paths.corpus / "unlabeled.txt"
    if not source.exists():
        fail(f"unlabeled text not found: {source} (run `tuneline demo` or pass --texts)")
    try:
        result = pretrain_mlm(p, load_unlabeled(source), out_dir, logger=_logger(log_jsonl))
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    _write_metrics(metrics, result)
    typer.echo(f"MLM held-out loss {result['heldout_loss_before']:.4f} -> "
               f"{result['heldout_loss_after']:.4f} (perplexity {result['perplexity_before']:.1f}"
               f" -> {result['perplexity_after']:.1f}); backbone -> {out_dir}")


def _init_dir(p, init_dir: Path | None) -> Path | None:
    """The MLM-adapted backbone to start from, when pretraining is on (or one is given)."""
    if init_dir is not None:
        return init_dir
    if not p.pretrain.enabled:
        return None
    if not (p.paths.pretrained / "config.json").exists():
        fail(f"pretrain.enabled is true but {p.paths.pretrained} holds no backbone "
             "(run `tuneline pretrain` first)")
    return p.paths.pretrained


@app.command("finetune")
def finetune(
    prepared: Annotated[Path | None, typer.Option(
        help="Prepared data folder (default: paths.prepared).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Model folder to write (default: paths.model).")] = None,
    init_dir: Annotated[Path | None, typer.Option(
        help="Backbone folder to start from (default: paths.pretrained when "
             "pretrain.enabled, else model.name_or_path).")] = None,
    checkpoints: Annotated[Path | None, typer.Option(
        help="Checkpoint folder (default: paths.checkpoints).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the latest checkpoint instead of starting over.")] = False,
    log_jsonl: JsonlOpt = None,
    metrics: MetricsOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune the classifier with finetune.strategy (and peft.method); save the model."""
    from components.finetune import TrainingDiverged, train

    p = params_or_exit(params, set_)
    prepared_dir = prepared or p.paths.prepared
    if not (prepared_dir / "labels.json").exists():
        fail(f"no prepared data in {prepared_dir} (run `tuneline prepare` first)")
    _quiet_transformers()
    out_dir = out or p.paths.model
    try:
        result = train(p, prepared_dir, out_dir, init_dir=_init_dir(p, init_dir),
                       checkpoint_dir=checkpoints, resume=resume,
                       logger=_logger(log_jsonl, append=resume))
    except TrainingDiverged as exc:
        fail(str(exc), code=3)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _write_metrics(metrics, result)
    typer.echo(json.dumps({k: result[k] for k in ("val_accuracy", "val_macro_f1", "val_loss",
                                                   "steps", "best_step", "train_seconds")}))
    typer.echo(f"model -> {out_dir}")
