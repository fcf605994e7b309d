"""A registered version as an MLflow model: pyfunc over the int8 bundle, from code.

The folder `build_pyfunc_model` writes; registration uploads it as a LoggedModel of its own
(one per release, see `log_release_model`), whose artifact folder is the version's source:

    MLmodel                  pyfunc flavor, signature, input example, model config
    model.py                 components/registry/pyfunc_model.py (models-from-code: no pickle)
    code/components/         the project files model.py can import (`model_code_files`)
    artifacts/bundle/        the served bundle files, manifest included
    prediction_reference.json  predicted-label / confidence shares on the test split
    reports/                 the release's gate verdict and test report
    requirements.txt, python_env.yaml, conda.yaml, input_example.json, ...

`mlflow.pyfunc.load_model("models:/NAME@champion")` and `mlflow models serve` use it as
any MLflow model; the tuneline server downloads only `artifacts/bundle` (BUNDLE_SUBPATH).
Importable without torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from components.closure import code_closure
from components.config import PROJECT_ROOT, Params
from components.evaluate.drift import REFERENCE_FILE
from components.release.export import served_files
from components.release.predictor import (
    graph_sha256,
    graph_sha256_on_disk,
    served_graph,
    verify_bundle,
)
from components.task_types import TaskType, of_bundle

BUNDLE_SUBPATH = "artifacts/bundle"
RELEASE_TAG = "release_fingerprint"
MODEL_CODE = "components/registry/pyfunc_model.py"
log = logging.getLogger(__name__)
REQUIREMENTS = ("onnxruntime", "tokenizers", "numpy", "pandas")


def requirements(runtime: str) -> tuple[str, ...]:
    """What loading the pyfunc needs: the base set, and the served graph's runtime."""
    return REQUIREMENTS if runtime in REQUIREMENTS else (*REQUIREMENTS, runtime)


def _pinned(packages: tuple[str, ...]) -> list[str]:
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def signature(task: TaskType) -> Any:
    """Input: a string column `text`; output: the task type's columns (texts: `label`,
    `score`, `scores` {label: p}; entities have no fixed output schema)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    inputs = Schema([ColSpec(DataType.string, "text")])
    columns = task.output_schema()
    if columns is None:
        return ModelSignature(inputs=inputs)
    kinds = {"string": DataType.string, "double": DataType.double,
             "map<double>": Map(DataType.double)}
    return ModelSignature(inputs=inputs,
                          outputs=Schema([ColSpec(kinds[kind], name) for name, kind in columns]))


def model_code_files() -> tuple[str, ...]:
    """The project files model.py loads: the modules it imports and what importing them
    loads (the task types' torch-free runtimes), shipped in the model's code folder.

    Only those: loading a model puts its code folder first on sys.path and re-imports these
    modules from it, so shipping e.g. config.py would move the project root of a process
    that also runs stages.
    """
    return tuple(f for f in code_closure(MODEL_CODE, at_import=True) if f != MODEL_CODE)


def build_pyfunc_model(bundle_dir: str | Path, out_dir: str | Path, params: Params, *,
                       example_texts: list[str], reference: dict[str, Any] | None = None
                       ) -> Path:
    """Write the MLflow model folder of a bundle into `out_dir` (which must not exist).

    Args:
        bundle_dir: an exported bundle; its served files are verified and copied.
        out_dir: the model folder to create.
        params: `serve.threads` and `serve.max_batch` become the model's defaults.
        example_texts: the input example (a few texts, e.g. from the test split).
        reference: prediction distribution on the test split, stored beside MLmodel.

    Raises:
        BundleIntegrityError: a served file is missing or differs from the manifest.
        ValueError: no example texts.
    """
    import mlflow.pyfunc
    import pandas as pd

    if not example_texts:
        raise ValueError("an MLflow model needs at least one example text")
    bundle_dir = Path(bundle_dir)
    files = served_files(bundle_dir)
    manifest = verify_bundle(bundle_dir, [f for f in files if f != "manifest.json"])
    graph = served_graph(bundle_dir)
    labels = json.loads((bundle_dir / "labels.json").read_text())["labels"]
    task = of_bundle(json.loads((bundle_dir / "export_config.json").read_text()))
    with tempfile.TemporaryDirectory(prefix="tuneline-pyfunc-") as tmp:
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        for name in files:
            shutil.copy2(bundle_dir / name, staged / name)
        code = Path(tmp) / "code"
        for name in model_code_files():
            (code / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, code / name)
        mlflow.pyfunc.save_model(
            str(out_dir), python_model=str(PROJECT_ROOT / MODEL_CODE),
            artifacts={"bundle": str(staged)}, code_paths=[str(code / "components")],
            signature=signature(task),
            input_example=pd.DataFrame({"text": list(example_texts[:3])}),
            pip_requirements=_pinned(requirements(graph.runtime)),
            model_config={"sha256": graph_sha256(graph, manifest),
                          "threads": params.serve.threads,
                          "batch_size": params.serve.max_batch},
            metadata={"tuneline_bundle": BUNDLE_SUBPATH, "labels": labels})
    if reference is not None:
        (Path(out_dir) / REFERENCE_FILE).write_text(json.dumps(reference, indent=2) + "\n")
    return Path(out_dir)


def test_reference(bundle_dir: str | Path, prepared_dir: str | Path, params: Params
                   ) -> tuple[dict[str, Any] | None, list[str]]:
    """(prediction distribution of the bundle's int8 model on the test split, test texts).

    The distribution is the task type's (None where answers are not one label per text,
    e.g. entities: no reference, no drift PSI); (None, []) when the prepared folder has no
    test split (nothing to measure on).
    """
    if not (Path(prepared_dir) / "test.jsonl").exists():
        return None, []
    task = of_bundle(json.loads((Path(bundle_dir) / "export_config.json").read_text()))
    texts = task.texts(prepared_dir, "test")
    if not texts:
        return None, []
    return task.reference(bundle_dir, prepared_dir, params), texts


def log_release_model(client: Any, params: Params, run_id: str, bundle_dir: str | Path,
                      prepared_dir: str | Path | None = None, *, release: str,
                      reports: dict[str, Path] | None = None,
                      metrics: dict[str, float] | None = None,
                      dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle as an MLflow 3 LoggedModel of its own: one per release, never rewritten.

    Each release gets a new LoggedModel (its own artifact folder), so registering the same
    training run again (another export or gate setting) can never change the files an
    earlier version serves. A READY LoggedModel of the same release and int8 sha256 (left by
    a registration that stopped before the version was created) is reused instead of
    uploading the bundle again; one whose upload never finished is marked FAILED.

    The prediction reference is measured on the test split of `prepared_dir` (default
    `paths.prepared`); without a test split the version gets none and the server exports
    the live distributions without a PSI. `reports` ({artifact folder: local folder}, e.g.
    the gate's verdict and the test report) travel with the model under `reports/`.
    `metrics` (the test scores) are logged on the LoggedModel itself, measured on `dataset`
    (a `tracking.dataset_refs` entry: its name and digest link them to the test split).

    Returns:
        {"source": artifact URI for the model version, "model_id", "tags": version tags to
         add, "reference": the reference or None}
    """
    from components.registry.tracking import ensure_experiment

    sha = graph_sha256_on_disk(bundle_dir)
    experiment = client.get_run(run_id).info.experiment_id
    tags = {"mlflow_model": "pyfunc", "bundle_path": BUNDLE_SUBPATH}
    reused = _ready_release_model(client, experiment, release, sha)
    if reused is not None:
        ref = reused.tags.get("prediction_reference", "none")
        return {"source": reused.artifact_location, "model_id": reused.model_id,
                "tags": {**tags, "prediction_reference": ref}, "reference": None}
    prepared = Path(prepared_dir) if prepared_dir is not None else Path(params.paths.prepared)
    reference, texts = test_reference(bundle_dir, prepared, params)
    if reference is None and not texts:
        log.warning(
            "%s has no test split: the version gets no prediction reference (no drift PSI)",
            prepared)
    tags["prediction_reference"] = REFERENCE_FILE if reference else "none"
    ensure_experiment(params, client)
    model = client.create_logged_model(
        experiment, name=params.registry.model_name, source_run_id=run_id,
        model_type="tuneline-bundle",
        tags={RELEASE_TAG: release, "sha256": sha, **tags})
    try:
        with tempfile.TemporaryDirectory(prefix="tuneline-model-") as tmp:
            folder = build_pyfunc_model(bundle_dir, Path(tmp) / "model", params,
                                        example_texts=texts[:3] or ["example text"],
                                        reference=reference)
            for name, src in (reports or {}).items():
                if Path(src).is_dir():
                    shutil.copytree(src, folder / "reports" / name)
            client.log_model_artifacts(model.model_id, str(folder))
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value, model_id=model.model_id,
                              dataset_name=(dataset or {}).get("name"),
                              dataset_digest=(dataset or {}).get("digest"))
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the original error matters
            client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return {"source": model.artifact_location, "model_id": model.model_id, "tags": tags,
            "reference": reference}


def _ready_release_model(client: Any, experiment: str, release: str, sha: str) -> Any:
    """A finished LoggedModel of this release and bundle, or None."""
    found = client.search_logged_models(
        [experiment], filter_string=f"tags.{RELEASE_TAG} = '{release}'")
    for model in found:
        status = str(getattr(model.status, "value", model.status))
        if status == "READY" and model.tags.get("sha256") == sha:
            return model
    return None


def download_version_files(model_version: Any, dst: str | Path, tracking_uri: str) -> Path:
    """Download a version's served bundle files (and its prediction reference) into `dst`.

    Versions logged as MLflow models keep the bundle under `bundle_path`; older versions
    hold the bundle files at the root of their source.
    """
    import mlflow

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tags = model_version.tags or {}
    sub = tags.get("bundle_path")
    uri = f"{model_version.source}/{sub}" if sub else model_version.source
    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / ".dl"),
                                                   tracking_uri=tracking_uri))
    for file in got.iterdir():
        shutil.move(str(file), dst / file.name)
    if tags.get("prediction_reference", "none") != "none":
        try:
            ref = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_version.source}/{tags['prediction_reference']}",
                dst_path=str(dst / ".dl-ref"), tracking_uri=tracking_uri)
            shutil.move(ref, dst / REFERENCE_FILE)
        except Exception as exc:  # monitoring data: its loss must not block serving the model
            log.error("version %s: prediction reference not downloaded: %s",
                      model_version.version, exc)
    for leftover in (dst / ".dl", dst / ".dl-ref"):
        shutil.rmtree(leftover, ignore_errors=True)
    return dst
