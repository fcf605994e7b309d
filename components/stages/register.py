"""Stage `register`: one MLflow model version per model and rule set; aliases move.

Its identity (the release fingerprint, a version tag) is the chain of fingerprints up to
the export plus the gate's rules, so registering twice what nothing changed is a no-op
that names the existing version, whoever calls it (`tuneline run`, `tuneline register`,
`dvc repro`). A version is created only from a verdict on this bundle against the current
champion (`chain.current_verdict`); the `tuneline register` verb and the flows run the
gate first, which reuses its verdict while the champion it judged against has not moved.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import read_json
from components.registry.model_card import CARD_FILE, CARD_FOLDER
from components.stages.base import StageResult, check_inputs_current, write_metrics
from components.stages.chain import current_verdict
from components.stages.spec import fingerprint, release_fingerprint

log = logging.getLogger("tuneline.stages")


def find_registered(params: Params) -> dict[str, Any] | None:
    """The registry version made from exactly these inputs and rules, if there is one."""
    from components.registry.versions import find_version

    return find_version(params, release_fingerprint=release_fingerprint(params))


def register(params: Params, *, force: bool = False) -> StageResult:
    """Register `paths.export` with its verdict; the verdict decides the alias moves.

    A version of this release whose registration stopped half-way (a crash or an MLflow
    outage between creating it and moving its aliases) is finished instead: the alias moves
    its verdict called for are made, then it is marked complete.

    Returns:
        result: {"version", "passed", "moves", "aliases", "run_id", "release_fingerprint",
        "unchanged", "repaired"}.
    """
    from components.registry.versions import complete_registration, is_complete

    started = time.perf_counter()
    release = release_fingerprint(params)
    found = None if force else find_registered(params)
    if found is not None and is_complete(found["tags"]):
        result = {"version": found["version"], "passed": found["tags"].get("gate_passed") == "true",
                  "moves": [], "aliases": {a: found["version"] for a in found["aliases"]},
                  "run_id": found["run_id"], "release_fingerprint": release, "unchanged": True,
                  "repaired": False}
    elif found is not None:
        done = complete_registration(params, found["version"])
        log.warning("register: v%s was registered but its alias moves were not finished; "
                    "finished them now", found["version"])
        result = {**done, "aliases": {a: str(v) for a, v in done["aliases"].items()},
                  "run_id": found["run_id"], "release_fingerprint": release,
                  "unchanged": False, "repaired": True}
    else:
        result = _register_new(params, release)
    write_metrics("register", params, result)
    summary = describe(result)
    log.info("register: %s", summary)
    return StageResult("register", release, result["unchanged"], None, result, summary,
                       time.perf_counter() - started)


def _register_new(params: Params, release: str) -> dict[str, Any]:
    from components.registry import tracking
    from components.registry.versions import publish

    check_inputs_current("register", params)
    verdict = current_verdict(params)
    run_id = _model_run(params)
    _log_metrics(params, run_id)
    datasets = tracking.log_datasets(params, run_id, params.paths.prepared)
    test_report = read_json(Path(params.paths.eval) / "report.json")
    # A run can be registered more than once (same model, other export or gate settings):
    # each version keeps the params it was released with.
    config = f"release/{release}/params.yaml"
    tracking.log_params_file(params, run_id, config)
    tags = {"release_fingerprint": release, "params_hash": params.hash(),
            "params_artifact": config, **_shipped_tags(params),
            "gate_decision": verdict_decision(verdict),
            "model_card": f"reports/{CARD_FOLDER}/{CARD_FILE}"}
    with tempfile.TemporaryDirectory(prefix="tuneline-card-") as tmp:
        card = Path(tmp) / CARD_FOLDER
        card.mkdir()
        text = _card(params, run_id, verdict, test_report, tags)
        (card / CARD_FILE).write_text(text)
        published = publish(
            params, run_id, params.paths.export, verdict, tags=tags, card=text,
            reports={"eval": Path(params.paths.eval), "gate": Path(params.paths.gate),
                     CARD_FOLDER: card},
            metrics={f"test_{k}": float(test_report[k]) for k in ("accuracy", "macro_f1",
                                                                 "entity_f1", "ece")
                     if isinstance(test_report.get(k), int | float)},
            dataset=datasets.get("test"))
    return {**published, "run_id": run_id, "release_fingerprint": release, "unchanged": False,
            "repaired": False}


def _card(params: Params, run_id: str, verdict: dict[str, Any], report: dict[str, Any],
          tags: dict[str, str]) -> str:
    """The release's model card (see components/registry/model_card.py)."""
    from components.registry import tracking
    from components.registry.model_card import render_model_card
    from components.release.export import PARITY_FILE

    run_tags = tracking.get_client(params).get_run(run_id).data.tags
    lineage = {**{k: v for k, v in run_tags.items() if not k.startswith("mlflow.")},
               **tracking.lineage_tags(params, params.paths.prepared),
               **{k: v for k, v in tags.items() if k in ("release_fingerprint",
                                                         "shipped_model")}}
    parity_file = Path(params.paths.export) / PARITY_FILE
    data_report = Path(params.paths.prepared) / "report.json"
    return render_model_card(
        name=params.registry.model_name, version=None, task=params.task.type,
        data=read_json(data_report) if data_report.exists() else {}, report=report,
        parity=read_json(parity_file) if parity_file.exists() else {}, verdict=verdict,
        lineage=lineage,
        training={"strategy": params.finetune.strategy, "PEFT method": params.peft.method,
                  "backbone": params.model.name_or_path, **_trained_with(params)})


def _trained_with(params: Params) -> dict[str, Any]:
    """Steps and input length the shipped model was trained with (`auto` resolved)."""
    from components.model.modeling import META_FILE
    from components.stages.chain import shipped_model_dir

    meta_file = Path(shipped_model_dir(params)) / META_FILE
    meta = read_json(meta_file) if meta_file.exists() else {}
    metrics = meta.get("metrics", {})
    return {"steps": metrics.get("steps", params.finetune.max_steps),
            "max length": meta.get("max_length", params.model.max_length),
            "truncated share": metrics.get("truncated_share")}


def _shipped_tags(params: Params) -> dict[str, str]:
    """Which model the version serves: the fine-tuned one, or its distilled student."""
    if not params.compress.enabled:
        return {"shipped_model": "fine-tuned"}
    return {"shipped_model": "distilled student",
            "compress_keep_layers": ",".join(map(str, params.compress.keep_layers))}


def _model_run(params: Params) -> str:
    """The model's MLflow run (started by finetune); a new one when this store lacks it."""
    from mlflow.exceptions import MlflowException

    from components.registry import tracking
    from components.stages.chain import model_run_id, run_tags

    run_id = model_run_id(params)
    if run_id is not None:
        try:
            tracking.get_client(params).get_run(run_id)
            return run_id
        except MlflowException:
            log.warning("MLflow run %s of the model is not in %s: starting a new run",
                        run_id, tracking.redact(tracking.tracking_uri(params)))
    run_id = tracking.start_run(params, params.paths.prepared,
                                tags=run_tags(params, fingerprint("finetune", params)))
    tracking.end_run(params, run_id)
    return run_id


def _log_metrics(params: Params, run_id: str) -> None:
    """Test and export-parity numbers on the model's run (the files go with the release's
    own LoggedModel: another release of the same run must not replace them)."""
    from components.registry import tracking
    from components.release.export import PARITY_FILE

    report = read_json(Path(params.paths.eval) / "report.json")
    tracking.log_stage(params, run_id, "test", _scalars(report))
    tracking.log_stage(params, run_id, "export",
                       _scalars(read_json(Path(params.paths.export) / PARITY_FILE)))


def _scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def verdict_decision(verdict: dict[str, Any]) -> str:
    from components.release.gate import decision_line

    return decision_line(verdict)[:5000]


def describe(result: dict[str, Any]) -> str:
    if result["unchanged"]:
        aliases = " ".join("@" + a for a in result["aliases"]) or "no alias"
        return (f"unchanged: v{result['version']} ({aliases}) was made from these exact data, "
                "params and code")
    if result.get("repaired"):
        moves = ", ".join(result["moves"]) or "none"
        note = f" ({result['note']})" if result.get("note") else ""
        return f"v{result['version']}: finished its registration, alias moves: {moves}{note}"
    verdict = "passed" if result["passed"] else "rejected"
    return f"v{result['version']} (gate {verdict}): {', '.join(result['moves'])}"
