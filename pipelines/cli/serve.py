"""`tuneline serve` and `tuneline predict`: the serving app and one-off predictions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit

BundleOpt = Annotated[Path | None, typer.Option(
    "--bundle", help="Use this exported bundle folder instead of the registry.")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias to follow.")]


@app.command("serve")
def serve(
    bundle: BundleOpt = None,
    alias: AliasOpt = "champion",
    cache_dir: Annotated[Path | None, typer.Option(
        help="Where registry versions are downloaded (default: a temp folder).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow a non-loopback --host without $TUNELINE_API_TOKEN (only "
                           "where a network policy or proxy decides who gets in).")] = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve models:/<registry.model_name>@champion (or --bundle) over HTTP with hot reload.

    Beyond loopback, /v1/predict needs a bearer token: set $TUNELINE_API_TOKEN (or pass
    --insecure); otherwise the server refuses to start.
    """
    from deploy.serve.auth import InsecureBindError
    from deploy.serve.runner import run_server

    p = params_or_exit(params, set_)
    if bundle is not None and not (bundle / "manifest.json").exists():
        fail(f"{bundle} is not an exported bundle folder (no manifest.json)")
    try:
        run_server(p, bundle_dir=bundle, alias=alias, cache_dir=cache_dir, host=host,
                   port=port, log_level=log_level, insecure=insecure)
    except InsecureBindError as exc:
        fail(str(exc))


@app.command("predict")
def predict(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
    bundle: BundleOpt = None,
    alias: AliasOpt = "champion",
    url: Annotated[str | None, typer.Option(
        help="Ask a running server instead (e.g. http://127.0.0.1:8000); sends "
             "$TUNELINE_API_TOKEN as bearer token when set.")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Classify texts and print JSON: label, score and all class scores per text."""
    p = params_or_exit(params, set_)
    result = _predict_remote(url, texts) if url else _predict_local(p, texts, bundle, alias)
    typer.echo(json.dumps(result, indent=2))


def _predict_remote(url: str, texts: list[str]) -> dict:
    import httpx

    from deploy.serve.auth import token_from_env

    token = token_from_env()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/predict", json={"texts": texts},
                          headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if resp.status_code != 200:
        fail(f"server answered {resp.status_code}: {resp.text}")
    return resp.json()


def _predict_local(p, texts: list[str], bundle: Path | None, alias: str) -> dict:
    from components.predictor import BundleIntegrityError, OnnxClassifier

    try:
        if bundle is not None:
            version, folder = "local", bundle
            clf = OnnxClassifier(folder, threads=p.serve.threads)
        else:
            from components.registry import download_bundle

            with tempfile.TemporaryDirectory(prefix="tuneline-predict-") as tmp:
                version, folder = download_bundle(p, alias, Path(tmp) / "bundle")
                clf = OnnxClassifier(folder, threads=p.serve.threads)
    except (BundleIntegrityError, FileNotFoundError, KeyError, ValueError) as exc:
        fail(f"cannot load the model: {exc}")
    preds = clf.predict(texts)
    return {"model_version": str(version),
            "predictions": [{"label": x.label, "score": x.score, "scores": x.scores}
                            for x in preds]}
