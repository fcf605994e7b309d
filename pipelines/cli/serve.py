"""`tuneline serve` and `tuneline predict`: the serving app and one-off predictions."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
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
    texts: Annotated[list[str] | None, typer.Argument(
        help="Texts to classify (or -i).", show_default=False)] = None,
    input_: Annotated[typer.FileText | None, typer.Option(
        "--input", "-i", help="Classify each line of this file instead (-i -: stdin); prints "
                              "JSON Lines, one object per text.")] = None,
    bundle: BundleOpt = None,
    alias: AliasOpt = "champion",
    url: Annotated[str | None, typer.Option(
        help="Ask a running server instead (e.g. http://127.0.0.1:8000); sends "
             "$TUNELINE_API_TOKEN as bearer token when set.")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Classify texts and print JSON: label, score and all class scores per text.

    With -i FILE (or -i - for stdin) every line is a text, blank lines are skipped, and each
    text prints as one line of JSON (text, label, score, scores, model_version) as soon as
    its batch of serve.max_texts is done.
    """
    p = params_or_exit(params, set_)
    if texts and input_ is not None:
        fail("give the texts as arguments or with -i, not both")
    if not texts and input_ is None:
        fail("nothing to classify: give texts, or -i FILE (-i - reads stdin)")
    classify = _remote(url) if url else _local(p, bundle, alias)
    if input_ is None:
        typer.echo(json.dumps(classify(texts), indent=2))
        return
    for batch in _batches(input_, p.serve.max_texts):
        result = classify(batch)
        for text, pred in zip(batch, result["predictions"], strict=True):
            typer.echo(json.dumps({"text": text, **pred,
                                   "model_version": result["model_version"]}))


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """The non-blank lines (without their line end), `size` at a time."""
    batch: list[str] = []
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _remote(url: str) -> Callable[[list[str]], dict]:
    import httpx

    from deploy.serve.auth import token_from_env

    token = token_from_env()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def classify(texts: list[str]) -> dict:
        try:
            resp = httpx.post(url.rstrip("/") + "/v1/predict", json={"texts": texts},
                              headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {url}: {exc}")
        if resp.status_code != 200:
            fail(f"server answered {resp.status_code}: {resp.text}")
        return resp.json()
    return classify


def _local(p, bundle: Path | None, alias: str) -> Callable[[list[str]], dict]:
    """The bundle (or the registry's `alias`) loaded once; its files can go afterwards."""
    from components.release.predictor import BundleIntegrityError
    from components.release.runtimes import load_classifier

    try:
        if bundle is not None:
            version, folder = "local", bundle
            clf = load_classifier(folder, threads=p.serve.threads)
        else:
            from components.registry.versions import download_bundle

            with tempfile.TemporaryDirectory(prefix="tuneline-predict-") as tmp:
                version, folder = download_bundle(p, alias, Path(tmp) / "bundle")
                clf = load_classifier(folder, threads=p.serve.threads)
    except (BundleIntegrityError, FileNotFoundError, KeyError, ValueError) as exc:
        fail(f"cannot load the model: {exc}")

    def classify(texts: list[str]) -> dict:
        return {"model_version": str(version),
                "predictions": [{"label": x.label, "score": x.score, "scores": x.scores}
                                for x in clf.predict(texts)]}
    return classify
