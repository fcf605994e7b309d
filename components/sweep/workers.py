"""Params that mean the same on every machine of a cluster: absolute paths and store URIs."""

from __future__ import annotations

from pathlib import Path

from components.config import Params, validate_params


def for_workers(params: Params) -> Params:
    """`params` with every path absolute and a relative SQLite tracking URI made absolute,
    so a trial running in another process (or on another machine sharing the folder) reads
    and writes the same files as the driver."""
    from components.registry.tracking import tracking_uri

    raw = params.model_dump(mode="json")
    raw["paths"] = {k: v if v is None else str(Path(v).resolve())
                    for k, v in raw["paths"].items()}
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    elif "://" not in uri:
        uri = str(Path(uri).resolve())
    raw["registry"]["tracking_uri"] = uri
    raw["registry"]["artifact_root"] = str(Path(raw["registry"]["artifact_root"]).resolve())
    return validate_params(raw)
