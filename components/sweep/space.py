"""The search space (`sweep.space`) as Optuna distributions, and a trial's values as params.

A searched key is any single value the finetune stage reads (`finetune.*`, `peft.*`,
`model.max_length`, ...). Whole-number params are searched as integers, other numbers as
floats, anything else by `choices`; every choice is checked against the params model
before a sweep starts, so a typo fails in one line instead of in trial 7.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from components.config import AUTO, ConfigError, Params, SearchRange, lookup, validate_params

# Decided once, before the trials: the sweep runs pretrain with the base params.
NOT_PER_TRIAL = ("pretrain",)


def search_space(params: Params) -> dict[str, Any]:
    """{dotted key: Optuna distribution} of `sweep.space`."""
    return {key: distribution(key, spec, params) for key, spec in params.sweep.space.items()}


def distribution(key: str, spec: SearchRange, params: Params) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.choices is not None:
        return CategoricalDistribution([typed_value(params, key, c) for c in spec.choices])
    current = lookup(params, key)
    if current == AUTO or (isinstance(current, int) and not isinstance(current, bool)):
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                               step=int(spec.step or 1))
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def suggest(trial: Any, params: Params) -> dict[str, Any]:
    """One value per searched key from the trial (enqueued trials get their fixed values)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for key, dist in search_space(params).items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step,
                                            log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step,
                                              log=dist.log)
    return values


def with_values(params: Params, values: dict[str, Any], **paths: Path) -> Params:
    """`params` with the searched `values` (and any `paths.<name>`) set, validated again.

    Raises:
        ConfigError: a value the params model rejects, naming its key.
    """
    raw = copy.deepcopy(params.model_dump(mode="json"))
    for key, value in {**values, **{f"paths.{k}": str(v) for k, v in paths.items()}}.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return validate_params(raw)


def typed_value(params: Params, key: str, value: Any) -> Any:
    """`value` as the params model stores it at `key` ("1e-4" from YAML -> 0.0001)."""
    return lookup(with_values(params, {key: value}), key)


def current_values(params: Params) -> dict[str, Any]:
    """The searched keys' values in `params` (the baseline trial)."""
    return {key: lookup(params, key) for key in params.sweep.space}


def anchor_values(params: Params) -> dict[str, Any]:
    """A fixed point of the space (low ends, first choices): with it in place of the searched
    values, the finetune fingerprint names everything a trial's score depends on except them."""
    return {key: spec.choices[0] if spec.choices is not None else
            typed_value(params, key, spec.low) for key, spec in params.sweep.space.items()}


def as_overrides(values: dict[str, Any]) -> list[str]:
    """`--set` strings that give back exactly these values (floats keep every digit)."""
    out = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out


def check_space(params: Params) -> None:
    """Every searched key is read by the finetune stage and every choice is valid.

    Raises:
        ConfigError: naming the key (and the choice) at fault.
    """
    from components.stages.spec import SPECS

    read = SPECS["finetune"].params
    for key, spec in params.sweep.space.items():
        searchable = [r for r in read if r.split(".")[0] not in NOT_PER_TRIAL]
        if not any(key == r or key.startswith(r + ".") for r in searchable):
            raise ConfigError(f"sweep.space.{key}: not a setting a trial can vary (searchable: "
                              f"{', '.join(searchable)} and the keys under them)")
        for choice in spec.choices or []:
            try:
                typed_value(params, key, choice)
            except ConfigError as exc:
                raise ConfigError(f"sweep.space.{key}: choice {choice!r} is invalid "
                                  f"({exc})") from None
    for i, point in enumerate(params.sweep.enqueue):
        try:
            with_values(params, point)
        except ConfigError as exc:
            raise ConfigError(f"sweep.enqueue[{i}]: {exc}") from None


def in_space(spec: SearchRange, value: Any) -> bool:
    """Whether `value` is one of the choices, or within [low, high]."""
    if spec.choices is not None:
        return value in spec.choices
    try:
        return float(spec.low) <= float(value) <= float(spec.high)
    except (TypeError, ValueError):
        return False
