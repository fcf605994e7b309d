"""MLflow model registry: register bundles, move aliases, promote, roll back, download.

Importable without torch or transformers (the serving process uses it).

A registered version is an MLflow model (pyfunc from code, see `components.registry.mlflow_model`)
stored as a LoggedModel of its own, one per release: the served bundle files
(model.int8.onnx, tokenizer.json, labels.json, export_config.json, parity.json,
manifest.json) are its `artifacts/bundle/`, next to the prediction distribution measured
on the test split and the release's reports. No later registration writes there, so a
version's files never change. No pickle anywhere. The version tag `sha256` is the sha256
of model.int8.onnx; downloads verify it.

Aliases (promotion is an alias move, never a stage):
    @champion    the model in production
    @previous    the champion before the last promotion (target of `rollback`)
    @challenger  the latest version that failed the gate
"""

from __future__ import annotations

import getpass
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_dir
from components.registry.tracking import get_client, tracking_uri
from components.release.export import served_files
from components.release.predictor import (
    BundleIntegrityError,
    graph_sha256_on_disk,
    served_graph,
    verify_bundle,
)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
MAX_TAG_CHARS = 5000
RUN_REGISTRATION_TAGS = ("registered_version", "gate_passed")
# A version is created `registration=pending` with the alias moves it calls for
# (`release_plan`); the mark turns `complete` only once those moves are made.
REGISTRATION_TAG, PLAN_TAG = "registration", "release_plan"
PENDING, COMPLETE = "pending", "complete"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _absent(exc: Exception) -> bool:
    """True when MLflow said "no such thing"; a refusal (401/403) or an outage is not that."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _absent(exc):
            raise
        client.create_registered_model(
            name, description="Text classifier bundles (int8 ONNX + tokenizer + labels).")


def get_alias_version(params: Params, alias: str) -> str | None:
    """Version number the alias points to, or None (also when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = get_client(params).get_registered_model(params.registry.model_name).aliases
    except MlflowException as exc:
        if not _absent(exc):
            raise
        return None
    version = aliases.get(alias.lstrip("@"))
    return str(version) if version is not None else None


def _verdict_tags(verdict: dict[str, Any]) -> dict[str, str]:
    tags = {"gate_passed": str(bool(verdict["passed"])).lower(),
            "gate_first_model": str(bool(verdict.get("first_model"))).lower()}
    if verdict.get("reasons"):
        tags["gate_reasons"] = "; ".join(verdict["reasons"])[:MAX_TAG_CHARS]
    for key, value in (verdict.get("metrics") or {}).items():
        tags[f"test_{key}"] = f"{value:.6g}"
    return tags


def publish(params: Params, run_id: str, bundle_dir: str | Path,
            verdict: dict[str, Any], tags: dict[str, str] | None = None,
            prepared_dir: str | Path | None = None,
            reports: dict[str, Path] | None = None, card: str | None = None,
            **model_extras: Any) -> dict[str, Any]:
    """Register the bundle as a new version of `registry.model_name` and move aliases.

    Gate passed: the old @champion becomes @previous, the new version @champion.
    Gate failed: the new version becomes @challenger, @champion is untouched, and the
    reasons are recorded on the version (tag `gate_reasons` and its description).

    The version's files are a LoggedModel of their own (`log_release_model`): no later
    registration writes where they live. The alias moves the verdict calls for are written
    on the version when it is created (tag `release_plan`) and the version is marked
    `registration=complete` only after they are done, so a registration stopped at any
    point is finished by `complete_registration` on the next run.

    Args:
        tags: version tags; `release_fingerprint` names the release (one LoggedModel each).
        reports: {name: local folder} logged with the model under `reports/`.
        card: the model card (Markdown): the version's description after the verdict, so
            MLflow's version page shows it.
        model_extras: `metrics` and their `dataset` for the LoggedModel (`log_release_model`).

    Returns:
        {"version", "passed", "sha256", "model_id", "aliases": {alias: version},
         "moves": [text]}

    Raises:
        BundleIntegrityError: a served file is missing or differs from the manifest.
    """
    from components.registry.mlflow_model import log_release_model

    bundle_dir = Path(bundle_dir)
    verify_bundle(bundle_dir, [f for f in served_files(bundle_dir) if f != "manifest.json"])
    tags = dict(tags or {})
    client = get_client(params)
    name = params.registry.model_name
    _ensure_registered_model(client, name)
    release = tags.get("release_fingerprint") or f"run-{run_id}-{_now()}"
    model = log_release_model(client, params, run_id, bundle_dir, prepared_dir,
                              release=release, reports=reports, **model_extras)
    sha = graph_sha256_on_disk(bundle_dir)
    run = client.get_run(run_id)
    # The run's lineage, not what earlier registrations of the same run wrote on it.
    lineage = {k: v for k, v in run.data.tags.items()
               if not k.startswith("mlflow.") and k not in RUN_REGISTRATION_TAGS}
    passed = bool(verdict["passed"])
    plan = {"passed": passed, "old_champion": get_alias_version(params, CHAMPION)}
    description = version_description(verdict, card)
    mv = client.create_model_version(
        name, source=model["source"], run_id=run_id, model_id=model["model_id"],
        tags={**lineage, **tags, **_verdict_tags(verdict), **model["tags"],
              "sha256": sha, "model_id": model["model_id"], "registered_at": _now(),
              PLAN_TAG: json.dumps(plan), REGISTRATION_TAG: PENDING},
        description=description)
    version = str(mv.version)
    done = complete_registration(params, version)
    return {"version": version, "passed": passed, "sha256": sha,
            "model_id": model["model_id"], "moves": done["moves"], "aliases": done["aliases"]}


def version_description(verdict: dict[str, Any], card: str | None = None) -> str:
    """The verdict in one line, then the model card without its title, within MLflow's
    description limit (a longer card is cut at a line and says where the whole one is)."""
    head = ("gate passed" if verdict["passed"]
            else "gate rejected: " + "; ".join(verdict["reasons"]))[:MAX_TAG_CHARS]
    if not card:
        return head
    body = card.partition("\n")[2].strip() if card.startswith("# ") else card.strip()
    text = f"{head}\n\n{body}\n"
    if len(text) <= MAX_TAG_CHARS:
        return text
    note = "\n\n(cut here: the whole card is the version's reports/card/model_card.md)\n"
    cut = text[:MAX_TAG_CHARS - len(note)].rsplit("\n", 1)[0]
    return cut + note


def complete_registration(params: Params, version: str) -> dict[str, Any]:
    """Finish a registration: the alias moves its `release_plan` calls for, then the mark.

    Safe to repeat at any point: each move is made only if it is not already in place, and
    a move someone else made since (a manual promote of another version) is not undone.

    Returns:
        {"version", "passed", "moves": [what this version's plan moved], "aliases",
         "note": why a planned move was not made, or ""}
    """
    from mlflow.entities import RunTag

    client = get_client(params)
    name = params.registry.model_name
    mv = _get_version(client, name, version)
    tags = dict(mv.tags or {})
    plan = json.loads(tags.get(PLAN_TAG) or "{}")
    passed = bool(plan.get("passed", tags.get("gate_passed") == "true"))
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    moves, note = [], ""
    if passed:
        old = plan.get("old_champion")
        now = aliases.get(CHAMPION)
        if now not in (None, old, version):
            note = (f"@{CHAMPION} was moved to v{now} after v{version} was registered; "
                    "left there")
        else:
            if old is not None and old != version:
                if aliases.get(PREVIOUS) != old:
                    client.set_registered_model_alias(name, PREVIOUS, old)
                moves.append(f"@{PREVIOUS} -> v{old}")
            if now != version:
                client.set_registered_model_alias(name, CHAMPION, version)
            moves.append(f"@{CHAMPION} -> v{version}")
            if aliases.get(CHALLENGER) == version:
                client.delete_registered_model_alias(name, CHALLENGER)
    else:
        held = aliases.get(CHALLENGER)
        if held is not None and int(held) > int(version):
            note = f"@{CHALLENGER} is already the newer v{held}; left there"
        else:
            if held != version:
                client.set_registered_model_alias(name, CHALLENGER, version)
            moves.append(f"@{CHALLENGER} -> v{version}")
    if mv.run_id:
        client.log_batch(mv.run_id, tags=[RunTag("registered_version", version),
                                          RunTag("gate_passed", str(passed).lower())])
    if note:
        client.set_model_version_tag(name, version, "registration_note", note)
    client.set_model_version_tag(name, version, REGISTRATION_TAG, COMPLETE)
    return {"version": version, "passed": passed, "moves": moves, "note": note,
            "aliases": dict(client.get_registered_model(name).aliases)}


def is_complete(tags: dict[str, str]) -> bool:
    """A version's registration finished (versions older than the mark count as finished)."""
    return tags.get(REGISTRATION_TAG, COMPLETE) == COMPLETE


def _make_champion(client: Any, name: str, version: str) -> list[str]:
    """@champion -> version; the old champion (if another version) becomes @previous.

    Repeating it after a stop between the two moves finishes the job: @previous is only
    set from a @champion that is not `version`.
    """
    old = client.get_registered_model(name).aliases.get(CHAMPION)
    moves = []
    if old is not None and str(old) != version:
        client.set_registered_model_alias(name, PREVIOUS, str(old))
        moves.append(f"@{PREVIOUS} -> v{old}")
    client.set_registered_model_alias(name, CHAMPION, version)
    moves.append(f"@{CHAMPION} -> v{version}")
    if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return moves


def promote(params: Params, version: str, reason: str = "", by: str | None = None
            ) -> dict[str, Any]:
    """Human override: make `version` the @champion whatever its gate verdict said.

    The override is recorded on the version (tags `promotion=manual`, `promoted_by`,
    `promoted_at`, `promotion_reason`, and the gate verdict it overrode stays as it was).
    `by` names who asked (default: this process's user).

    Raises:
        LookupError: the version does not exist.
    """
    client = get_client(params)
    name = params.registry.model_name
    _get_version(client, name, version)
    moves = _make_champion(client, name, str(version))
    _tag(client, name, str(version), {"promotion": "manual",
                                      "promoted_by": by or getpass.getuser(),
                                      "promoted_at": _now(), "promotion_reason": reason or "-"})
    return {"version": str(version), "moves": moves,
            "aliases": dict(client.get_registered_model(name).aliases)}


def rollback(params: Params, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """@champion <- @previous; the demoted version is tagged who, when and why.

    Tags on the demoted version: `rolled_back_at`, `rolled_back_by`, `rollback_reason`.
    @previous is cleared afterwards, so a second rollback fails instead of flipping back.
    The demoted version is tagged before any alias moves, and a rollback stopped between
    its two moves (@champion already equal to @previous) is finished by the next one.

    Raises:
        LookupError: there is no @previous version.
    """
    client = get_client(params)
    name = params.registry.model_name
    previous, current = get_alias_version(params, PREVIOUS), get_alias_version(params, CHAMPION)
    if previous is None:
        raise LookupError(f"{name} has no @{PREVIOUS} version to roll back to")
    demoted = current if current != previous else None
    if demoted is not None:
        _tag(client, name, demoted, {"rolled_back_at": _now(),
                                     "rolled_back_by": by or getpass.getuser(),
                                     "rollback_reason": reason or "-"})
        client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    return {"version": previous, "demoted": demoted,
            "moves": [f"@{CHAMPION} -> v{previous}", f"@{PREVIOUS} cleared"],
            "aliases": dict(client.get_registered_model(name).aliases)}


def _tag(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:MAX_TAG_CHARS])


def _get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _absent(exc):
            raise
        raise LookupError(f"{name} has no version {version}") from None


def resolve_ref(params: Params, ref: str) -> str:
    """A version number for `ref`: "champion"/"@champion" (any alias) or "3"."""
    if str(ref).isdigit():
        return str(ref)
    version = get_alias_version(params, ref)
    if version is None:
        raise LookupError(f"{params.registry.model_name} has no @{ref.lstrip('@')} alias")
    return version


def version_tags(params: Params, ref: str) -> tuple[str, dict[str, str]]:
    """(version number, tags) of a version number or alias.

    Raises:
        LookupError: unknown alias or version.
    """
    version = resolve_ref(params, ref)
    mv = _get_version(get_client(params), params.registry.model_name, version)
    return version, dict(mv.tags or {})


def download_bundle(params: Params, ref: str, dst: str | Path) -> tuple[str, Path]:
    """Fetch a version's bundle into `dst` (replaced atomically) and verify it.

    Checks the sha256 of the served graph against the version tag and every served file
    against the manifest before `dst` is replaced, so a bad download leaves `dst` as it was.

    Returns:
        (version, dst)

    Raises:
        LookupError: unknown alias or version.
        BundleIntegrityError: a file is missing or its sha256 does not match.
    """
    from components.registry.mlflow_model import download_version_files

    client = get_client(params)
    name = params.registry.model_name
    version = resolve_ref(params, ref)
    mv = _get_version(client, name, version)
    dst = Path(dst)
    with atomic_dir(dst) as tmp:
        download_version_files(mv, tmp, tracking_uri(params))
        expected = (mv.tags or {}).get("sha256")
        graph = served_graph(tmp) if (tmp / "export_config.json").exists() else None
        present = graph is not None and all((tmp / f).exists() for f in graph.files)
        actual = graph_sha256_on_disk(tmp, graph) if present else None
        if expected is None or actual != expected:
            what = graph.file if graph else "the served graph"
            raise BundleIntegrityError(f"{name} v{version}: {what} sha256 {actual} does "
                                       f"not match the version tag {expected}")
        verify_bundle(tmp, [f for f in served_files(tmp) if f != "manifest.json"])
    return version, dst


def model_card(params: Params, ref: str) -> str:
    """The model card a version carries (Markdown), with its version number filled in.

    Raises:
        LookupError: unknown version, or a version registered before cards existed.
    """
    import mlflow

    client = get_client(params)
    version = resolve_ref(params, ref)
    mv = _get_version(client, params.registry.model_name, version)
    path = (mv.tags or {}).get("model_card")
    if not path:
        raise LookupError(f"{params.registry.model_name} v{version} has no model card "
                          "(registered before cards existed)")
    with tempfile.TemporaryDirectory(prefix="tuneline-card-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{mv.source}/{path}", dst_path=tmp, tracking_uri=tracking_uri(params))
        text = Path(local).read_text()
    first, _, rest = text.partition("\n")
    return f"{first} v{version}\n{rest}" if first.startswith("# Model card") else text


def champion_ref(params: Params) -> dict[str, str] | None:
    """{"version", "sha256"} of the @champion, None when there is none."""
    version = get_alias_version(params, CHAMPION)
    if version is None:
        return None
    mv = _get_version(get_client(params), params.registry.model_name, version)
    return {"version": version, "sha256": (mv.tags or {}).get("sha256", "")}


def champion_bundle(params: Params, dst: str | Path) -> Path | None:
    """Download the @champion bundle into `dst` for re-scoring; None when there is none."""
    ref = champion_ref(params)
    if ref is None:
        return None
    return download_bundle(params, ref["version"], dst)[1]


def list_versions(params: Params) -> list[dict[str, Any]]:
    """Every version, newest first, with its aliases, test metrics and gate verdict tags."""
    from mlflow.exceptions import MlflowException

    client = get_client(params)
    name = params.registry.model_name
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if not _absent(exc):
            raise
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        version = str(mv.version)
        rows.append({"version": version, "aliases": sorted(by_version.get(version, [])),
                     "run_id": mv.run_id, "tags": mv.tags or {},
                     "created": time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.gmtime(mv.creation_timestamp / 1000))})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def find_version(params: Params, **tags: str) -> dict[str, Any] | None:
    """The newest version whose tags include every `key=value` given, or None."""
    for row in list_versions(params):
        if all(row["tags"].get(key) == value for key, value in tags.items()):
            return row
    return None
