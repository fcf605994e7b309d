"""Where a model came from, read back from the registry: a version's lineage tags (written
at training and registration by tracking.py and the stages), its params (the run's params
artifact) and their difference from @champion's, its aliases and gate verdict, as `tuneline
models show` prints them.

Importable without torch (the serving process and the registry CLI use it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.config import Params

# (tag, what it is) in the order `tuneline models show` prints them.
LINEAGE_TAGS = (
    ("raw_source", "input file (path at training time)"),
    ("raw_data_hash", "md5 of the exact input bytes"),
    ("input_version", "DVC hash of the ingested input folder"),
    ("unlabeled_version", "DVC hash of the ingested unlabeled text"),
    ("data_version", "DVC hash of the prepared splits"),
    ("git_commit", "code commit"),
    ("params_hash", "params hash"),
    ("model_fingerprint", "finetune stage fingerprint"),
    ("release_fingerprint", "release fingerprint (model + gate rules)"),
    ("strategy", "strategy"),
    ("peft_method", "PEFT method"),
    ("backbone", "backbone"),
)



def version_params(params: Params, row: dict[str, Any]) -> dict[str, str]:
    """The flattened params a version was released with (its run's params artifact)."""
    import yaml

    from components.registry.tracking import flatten, get_client

    artifact = row["tags"].get("params_artifact", "config/params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = get_client(params).download_artifacts(row["run_id"], artifact, tmp)
        return flatten(yaml.safe_load(Path(path).read_text()) or {})


def params_diff(params: Params, row: dict[str, Any], other: dict[str, Any]
                ) -> list[tuple[str, str, str]]:
    """(key, this version's value, the other's) for every param that differs."""
    ours, theirs = version_params(params, row), version_params(params, other)
    return [(k, ours.get(k, "-"), theirs.get(k, "-")) for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)]


def version_lineage(params: Params, ref: str) -> dict[str, Any]:
    """What `tuneline models show` reports about a version, as data: its aliases, gate
    verdict, test metrics, lineage tags, every tag, and the params that differ from
    @champion's (`params_diff`: None when there is no other @champion to compare with).

    Raises:
        LookupError: unknown version or alias.
    """
    from components.registry.versions import CHAMPION, get_alias_version, list_versions, resolve_ref

    version = resolve_ref(params, ref)
    rows = list_versions(params)
    row = next((r for r in rows if r["version"] == version), None)
    if row is None:
        raise LookupError(f"{params.registry.model_name} has no version {version}")
    tags = row["tags"]
    champion = get_alias_version(params, CHAMPION)
    other = next((r for r in rows if r["version"] == champion and champion != version), None)
    diff = params_diff(params, row, other) if other is not None else None
    return {"model": params.registry.model_name, "version": version,
            "aliases": row["aliases"], "run_id": row["run_id"],
            "registered_at": tags.get("registered_at", row["created"]),
            "gate_passed": {"true": True, "false": False}.get(tags.get("gate_passed", "")),
            "test": {k[5:]: v for k, v in sorted(tags.items()) if k.startswith("test_")},
            "lineage": {tag: tags.get(tag) for tag, _ in LINEAGE_TAGS},
            "champion": champion, "tags": tags,
            "params_diff": None if diff is None else [
                {"key": key, "value": ours, "champion": theirs} for key, ours, theirs in diff]}


def describe_version(params: Params, ref: str) -> str:
    """The lineage of a version as text: data, code, params vs @champion, gate verdict.

    Raises:
        LookupError: unknown version or alias.
    """
    return render_lineage(version_lineage(params, ref))


def render_lineage(info: dict[str, Any]) -> str:
    """`version_lineage`'s answer as the text `tuneline models show` prints."""
    tags, version = info["tags"], info["version"]
    aliases = " ".join("@" + a for a in info["aliases"]) or "no alias"
    verdict = {True: "PASSED", False: "REJECTED"}.get(info["gate_passed"], "?")
    lines = [f"{info['model']} v{version} ({aliases}), registered {info['registered_at']}, "
             f"MLflow run {info['run_id']}",
             f"gate: {tags.get('gate_decision') or verdict + ' ' + tags.get('gate_reasons', '')}",
             "test: " + ", ".join(f"{k} {v}" for k, v in info["test"].items()), "lineage:"]
    lines += [f"  {what:<42} {info['lineage'][tag] or '-'}" for tag, what in LINEAGE_TAGS]
    if tags.get("promotion") == "manual":
        lines.append(f"manual promotion by {tags.get('promoted_by')} at "
                     f"{tags.get('promoted_at')}: {tags.get('promotion_reason')}")
    if tags.get("rolled_back_at"):
        lines.append(f"rolled back by {tags.get('rolled_back_by', '?')} at "
                     f"{tags['rolled_back_at']}: {tags.get('rollback_reason', '-')}")
    return "\n".join(lines + _champion_lines(info)) + "\n"


def _champion_lines(info: dict[str, Any]) -> list[str]:
    champion, diff = info["champion"], info["params_diff"]
    if champion is None:
        return ["params: no @champion to compare with"]
    if champion == info["version"]:
        return ["params: this version is the @champion"]
    if diff is None:
        return [f"params: @champion v{champion} is not among the versions"]
    if not diff:
        return [f"params: identical to @champion v{champion}'s"]
    return [f"params that differ from @champion v{champion} (this | champion):"] + [
        f"  {d['key']:<42} {d['value']} | {d['champion']}" for d in diff]
