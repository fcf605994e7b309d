"""What a run started from a deployment may ask for.

Whoever can press Run in the Prefect UI (or emit a `tuneline.data.changed` event) picks the
flow's parameters, and the runner does what they say with its own rights. So such a run is
checked against the params the deployments were started with, before any work starts:

- an override (the form's `overrides`, and its named fields: `strategy` is
  `finetune.strategy=...`) may change only a key matching a pattern of
  `ui.allowed_overrides`; `finetune.nproc` at most `ui.max_nproc`;
- `params_file` must resolve (symlinks and `..` followed) inside the project folder;
- the data file must resolve inside the project folder or one of `ui.data_roots`.

A value equal to the deployed one changes nothing and always passes: the form is filled
with those values, and a schedule sends them unchanged. A run started from the shell is not
checked: whoever runs it already has the runner's rights.

The deployments' runner records what it was started with (`deployed_with`) in the
environment its flow runs inherit; `deployed_params` reads it back there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from components.config import (
    ConfigError,
    Params,
    default_params_path,
    load_params,
    lookup,
    parse_override,
)

DEPLOYED_WITH = "TUNELINE_DEPLOYED_WITH"
DATA_KEYS = ("paths.raw", "paths.unlabeled")  # data files: the data-root rule, if allowed
FROM_DEPLOYMENT = "a run started from a deployment"


class RefusedRequest(ConfigError):
    """A run started from a deployment asked for something outside its allowlist."""


def deployed_with(params_file: str | Path, overrides: list[str] | None) -> dict[str, str]:
    """The environment entry telling a deployment's flow runs what it was started with."""
    record = {"params_file": str(Path(params_file).resolve()), "overrides": list(overrides or [])}
    return {DEPLOYED_WITH: json.dumps(record)}


def deployed_params(environ: Mapping[str, str]) -> tuple[Params, Path]:
    """The params the deployments were started with, and the project folder (their file's).

    Without a record (deployed by other means) the default params file stands for it.
    """
    record = json.loads(environ.get(DEPLOYED_WITH) or "{}")
    path = Path(record.get("params_file") or default_params_path()).resolve()
    return load_params(path, record.get("overrides", [])), path.parent


def check_run_request(params: Params, overrides: list[str] | None,
                      params_file: str | Path | None, data_path: str | Path | None,
                      project_root: str | Path) -> None:
    """Refuse a deployment run's request that leaves what `params.ui` allows.

    Args:
        params: The params the deployments were started with (their `ui` section holds
            the rules, and their values are the ones a request may repeat freely).
        overrides: The requested `key.path=value` items, the named fields' included.
        params_file: The requested params.yaml; empty: the deployment's.
        data_path: The requested data file (the form's or an event's); empty: paths.raw.
        project_root: The project folder.

    Raises:
        RefusedRequest: naming the key or path and the rule it breaks.
        ConfigError: an override is malformed.
    """
    root = Path(project_root).resolve()
    if params_file:
        _check_inside("params_file", params_file, [root], f"the project folder {root}")
    for item in overrides or []:
        _check_override(params, item, root)
    if data_path and not _unchanged(params, "paths.raw", str(data_path)):
        _check_data_path(params, "data_path", data_path, root)


def _check_override(params: Params, item: str, root: Path) -> None:
    parts, value = parse_override(item)
    key = ".".join(parts)
    if _unchanged(params, key, value):
        return
    allowed = params.ui.allowed_overrides
    if not any(fnmatchcase(key, pattern) for pattern in allowed):
        raise RefusedRequest(f"refused override {key}: {FROM_DEPLOYMENT} may set only the "
                             f"keys in ui.allowed_overrides ({', '.join(allowed) or 'none'})")
    # A whole section as the value ("finetune={nproc: 64}") reaches its keys too.
    for leaf, leaf_value in _leaves(key, value):
        if (leaf == "finetune.nproc" and isinstance(leaf_value, int)
                and leaf_value > params.ui.max_nproc):
            raise RefusedRequest(f"refused override finetune.nproc={leaf_value}: "
                                 f"{FROM_DEPLOYMENT} may start at most "
                                 f"ui.max_nproc={params.ui.max_nproc} ranks")
        if leaf in DATA_KEYS and isinstance(leaf_value, str) and leaf_value:
            _check_data_path(params, leaf, leaf_value, root)


def _check_data_path(params: Params, what: str, path: str | Path, root: Path) -> None:
    extra = [_from(root, r) for r in params.ui.data_roots]
    shown = ", ".join(str(r) for r in extra) or "none set"
    _check_inside(what, path, [root, *extra],
                  f"the project folder {root} and ui.data_roots ({shown})")


def _check_inside(what: str, path: str | Path, roots: list[Path], where: str) -> None:
    """`path` resolved the way it will be read (from the working folder, symlinks and `..`
    followed) must be in one of `roots`."""
    resolved = Path(os.path.realpath(path))
    if not any(resolved.is_relative_to(r) for r in roots):
        raise RefusedRequest(f"refused {what} {path}: it resolves to {resolved}, outside "
                             f"{where}, where {FROM_DEPLOYMENT} must stay")


def _from(root: Path, folder: Path) -> Path:
    return Path(os.path.realpath(root / folder))  # an absolute `folder` stays itself


def _unchanged(params: Params, key: str, value: Any) -> bool:
    """`key` already has `value` in the deployed params: the request changes nothing."""
    try:
        current = lookup(params, key)
    except ValueError:
        return False
    return to_jsonable_python(current) == to_jsonable_python(value)


def _leaves(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for sub, item in value.items():
            yield from _leaves(f"{key}.{sub}", item)
    else:
        yield key, value
