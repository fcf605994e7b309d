"""`tuneline models [show VERSION | promote VERSION | rollback]`: the MLflow registry from
the shell. `tuneline promote` and `tuneline rollback` are hidden aliases of the last two."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.app import (
    JsonOpt,
    OutputOpt,
    ParamsOpt,
    SetOpt,
    app,
    emit,
    params_or_exit,
    user_errors,
)

models_app = typer.Typer(help="Registered versions: list them, show one's lineage, promote "
                              "one by hand, roll back.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models(ctx: typer.Context, as_json: JsonOpt = False, output: OutputOpt = None,
           params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """List registered versions with aliases, test metrics and gate verdicts."""
    if ctx.invoked_subcommand is not None:
        return
    from components.registry.versions import list_versions

    p = params_or_exit(params, set_)
    with user_errors():
        rows = list_versions(p)
    emit(rows, _table(rows) if rows else f"no versions of {p.registry.model_name} registered "
                                          "yet", as_json=as_json, output=output)


def _table(rows: list[dict]) -> str:
    lines = [f"{'ver':>4}  {'aliases':<22} {'acc':>6} {'F1':>6}  {'gate':<8} {'created':<19}  "
             "notes"]
    for r in rows:
        t = r["tags"]
        gate_text = {"true": "passed", "false": "rejected"}.get(t.get("gate_passed", ""), "?")
        notes = [f"manual promotion ({t.get('promotion_reason', '-')})"] \
            if t.get("promotion") == "manual" else []
        if t.get("gate_reasons"):
            notes.append(t["gate_reasons"])
        if t.get("rolled_back_at"):
            notes.append(f"rolled back {t['rolled_back_at']} ({t.get('rollback_reason', '-')})")
        aliases = " ".join("@" + a for a in r["aliases"]) or "-"
        lines.append(f"{r['version']:>4}  {aliases:<22} {t.get('test_accuracy', '-'):>6} "
                     f"{t.get('test_macro_f1', '-'):>6}  {gate_text:<8} {r['created']:<19}  "
                     f"{'; '.join(notes)}")
    return "\n".join(lines)


@models_app.command("show")
def show(version: Annotated[str, typer.Argument(help="Version number or alias.")],
         card: Annotated[bool, typer.Option(
             "--card", help="Print the version's model card (Markdown) instead.")] = False,
         as_json: JsonOpt = False, output: OutputOpt = None,
         params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The full lineage of VERSION: data hashes, code, params (diff vs @champion), verdict."""
    from components.registry.lineage import render_lineage, version_lineage
    from components.registry.versions import model_card

    p = params_or_exit(params, set_)
    if card:
        with user_errors():
            text = model_card(p, version)
        emit({"version": version, "model_card": text}, text.rstrip(), as_json=as_json,
             output=output)
        return
    with user_errors():
        lineage = version_lineage(p, version)
    emit(lineage, render_lineage(lineage).rstrip(), as_json=as_json, output=output)


@models_app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="Version number to make @champion.")],
            reason: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "",
            as_json: JsonOpt = False, output: OutputOpt = None,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Human override: make VERSION the @champion (recorded as a manual promotion)."""
    from components.registry.versions import promote as promote_version

    p = params_or_exit(params, set_)
    with user_errors():
        result = promote_version(p, version, reason)
    emit(result, f"promoted v{result['version']} by hand: {', '.join(result['moves'])}",
         as_json=as_json, output=output)


@models_app.command("rollback")
def rollback(reason: Annotated[str, typer.Option(help="Why (recorded on the demoted version).")
                               ] = "",
             as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Make the @previous version the @champion again."""
    from components.registry.versions import rollback as rollback_champion

    p = params_or_exit(params, set_)
    with user_errors():
        result = rollback_champion(p, reason)
    emit(result, f"rolled back: v{result['demoted']} -> v{result['version']} "
                 f"({', '.join(result['moves'])})", as_json=as_json, output=output)


# The names they had before `models` grouped them; scripts and habits still use them.
app.command("promote", hidden=True)(promote)
app.command("rollback", hidden=True)(rollback)
