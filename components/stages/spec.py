"""What each stage reads and writes, declared once: fingerprints and dvc.yaml come from here.

A stage's fingerprint is a hash of exactly what decides its output:
  - the values of the params keys it declares (never a `paths.*` key: a path says where
    something is, its content says what it is; nor, for the training stages,
    `model.num_threads`: threads decide how fast a model is trained, not which model, so a
    sweep trial trained on one thread and the same settings trained on two are one model),
  - the source of the code it runs: the closure of its module's imports (closure.py),
  - the identity of each input it declares: the fingerprint of the stage that wrote it
    (trained models: retraining is not bit-reproducible across machines, and what made a
    model is what matters), or the content hash of a data folder (as DVC computes it),
  - for the gate, the champion it is judged against (a runtime input DVC cannot see).
`dvc.yaml` is rendered from the same table (`render_dvc_yaml`; a test keeps the committed
file equal to it), so `tuneline run` and `dvc repro` agree on what invalidates what.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import PROJECT_ROOT, Params

FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class Dep:
    """An input of a stage: a path template and the stage that writes it.

    Attributes:
        by_content: the input's identity is its content hash (data folders), not the
            fingerprint of the stage that wrote it (trained models).
        identity: False for an input that is read but not part of what the output is
            (see `register`).
    """

    path: str
    stage: str
    by_content: bool = False
    identity: bool = True


@dataclass(frozen=True)
class StageSpec:
    """One stage: the params keys, code and inputs it reads, the outputs it writes.

    `always_changed`: the stage reads state DVC cannot see (a file anywhere on disk, the
    model registry), so `dvc repro` always calls it; the stage itself then skips when its
    fingerprint says nothing changed.
    """

    name: str
    summary: str
    params: tuple[str, ...] = ()
    extra_code: tuple[str, ...] = ()  # code it runs that no import names (see `stage_code`)
    deps: tuple[Dep, ...] = ()
    outs: tuple[str, ...] = ()
    always_changed: bool = False
    persist: bool = False
    switch: str | None = None  # a boolean param; when false the stage only writes a marker
    cmd_options: tuple[str, ...] = ()  # options of the `tuneline` verb dvc.yaml runs

    def is_off(self, params: Params) -> bool:
        return self.switch is not None and not param_values((self.switch,), params)[self.switch]

    def active_deps(self, params: Params) -> tuple[Dep, ...]:
        """The inputs the stage reads under these params (none when it is switched off)."""
        return () if self.is_off(params) else self.deps


LABELED = "${paths.input}/labeled"
UNLABELED = "${paths.input}/unlabeled"
PREPARED = Dep("${paths.prepared}", "prepare", by_content=True)
MODEL = Dep("${paths.model}", "finetune")
COMPRESSED = Dep("${paths.compressed}", "compress")

SPECS: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec(
        "ingest", "copy the exact input bytes (labeled + unlabeled) into the project",
        params=("task.type", "data", "demo"),
        outs=(LABELED, UNLABELED), always_changed=True),
    StageSpec(
        "prepare", "validate, quarantine, split",
        params=("task.type", "data"),
        deps=(Dep(LABELED, "ingest", by_content=True),), outs=("${paths.prepared}",)),
    StageSpec(
        "pretrain", "domain pretraining of the backbone, kept only if a linear probe on "
                    "frozen features says it helps (a marker when pretrain.enabled is off)",
        params=("model.name_or_path", "model.max_length", "model.pooling", "pretrain",
                "finetune.linear_probe", "finetune.seed"),
        deps=(Dep(UNLABELED, "ingest", by_content=True), PREPARED),
        outs=("${paths.pretrained}",), switch="pretrain.enabled"),
    StageSpec(
        "finetune", "train the classifier; opens the MLflow run",
        params=("task", "model.name_or_path", "model.max_length", "model.pooling",
                "model.device", "peft", "pretrain.enabled", "finetune"),
        deps=(Dep(LABELED, "ingest", by_content=True), PREPARED,
              Dep("${paths.pretrained}", "pretrain")),
        # with finetune.nproc > 1 the ranks run this module (started by name, not imported)
        extra_code=("components/stages/ranks.py",),
        outs=("${paths.model}",)),
    StageSpec(
        "compress", "distil into a student with fewer layers (a marker when off)",
        params=("compress", "finetune", "model.max_length", "evaluate.batch_size"),
        deps=(MODEL, PREPARED, Dep(UNLABELED, "ingest", by_content=True)),
        outs=("${paths.compressed}",), switch="compress.enabled"),
    StageSpec(
        "evaluate", "score the shipped torch model (the student when compress is on)",
        params=("task.type", "evaluate", "compress.enabled"),
        deps=(MODEL, COMPRESSED, PREPARED), outs=("${paths.eval}",)),
    StageSpec(
        "export", "ONNX fp32 + int8 candidates, parity, size, latency; the served graph",
        # The gate's int8 rules judge each int8 candidate.
        params=("task.type", "export", "evaluate.batch_size", "model.num_threads",
                "compress.enabled", "gate.int8_confident_probability",
                "gate.int8_max_accuracy_drop", "gate.noise"),
        deps=(MODEL, COMPRESSED, PREPARED), outs=("${paths.export}",)),
    StageSpec(
        "gate", "judge the bundle against the rules and the re-scored @champion",
        params=("task.type", "gate", "evaluate", "export.latency_repeats",
                "model.num_threads", "registry.model_name"),
        deps=(Dep("${paths.export}", "export"), PREPARED),
        outs=("${paths.gate}",), always_changed=True, persist=True,
        cmd_options=("--allow-reject",)),  # a rejected model is still registered
    # One registry version is one model judged by one set of rules: which champion the
    # verdict was measured against is not part of its identity (a rollback does not make
    # the same model a new version).
    StageSpec(
        "register", "register the version; move @champion or @challenger",
        # the pyfunc wrapper bakes in its runtime settings; its code is loaded from a file
        params=("gate", "registry.model_name", "serve.threads", "serve.max_batch",
                "monitoring.confidence_bins"),
        extra_code=("components/registry/pyfunc_model.py",),
        deps=(Dep("${paths.gate}", "gate", identity=False), Dep("${paths.export}", "export"),
              Dep("${paths.eval}", "evaluate")),
        always_changed=True),
]}
ORDER = tuple(SPECS)


# ---------------------------------------------------------------------------- paths


def resolve(template: str, params: Params) -> Path:
    """A `${paths.x}/rest` template as a path under the current params."""
    out = template
    for key, value in params.paths.model_dump().items():
        out = out.replace(f"${{paths.{key}}}", str(value))
    if "${" in out:
        raise ValueError(f"unresolved template {template!r}")
    return Path(out)


def output_dir(name: str, params: Params) -> Path:
    """The first output folder of a stage (where its fingerprint file lives)."""
    return resolve(SPECS[name].outs[0], params)


# ---------------------------------------------------------------------------- fingerprints


def param_values(keys: tuple[str, ...], params: Params) -> dict[str, Any]:
    """{dotted key: JSON value} of the declared params."""
    dump = params.model_dump(mode="json")
    out = {}
    for key in keys:
        node: Any = dump
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def stage_code(name: str, root: Path = PROJECT_ROOT) -> tuple[str, ...]:
    """The files stage `name` runs: the import closure of its module and its `extra_code`."""
    from components.closure import code_closure, stage_module

    return code_closure((stage_module(name), *SPECS[name].extra_code), root)


def code_hash(paths: tuple[str, ...], root: Path = PROJECT_ROOT) -> str:
    """Hash of the sources of the given files (and of the Python files under folders)."""
    h = hashlib.sha256()
    for rel in paths:
        target = root / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def digest(stage: str, **inputs: Any) -> str:
    blob = json.dumps({"stage": stage, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def content_hash(path: Path) -> str:
    """DVC's md5 of a file or folder; "missing" when it does not exist."""
    from components.data.files import data_version

    return data_version(path) if path.exists() else "missing"


def fingerprint(name: str, params: Params, runtime: dict[str, Any] | None = None,
                root: Path = PROJECT_ROOT) -> str:
    """The fingerprint of stage `name` under `params` (see the module docstring).

    Upstream stages' fingerprints are computed from params and code alone, so the whole
    chain is known before anything runs; data folders are hashed as they are on disk.
    `runtime` adds inputs only the caller knows (the gate's champion).
    """
    return _fingerprint(name, params, runtime or {}, {}, root)


def _fingerprint(name: str, params: Params, runtime: dict[str, Any],
                 memo: dict[str, str], root: Path) -> str:
    if name in memo and not runtime:
        return memo[name]
    spec = SPECS[name]
    if spec.is_off(params):
        # A marker only: nothing else decides what the next stage starts from.
        return digest(name, off=True)
    inputs = {dep.path: (content_hash(resolve(dep.path, params)) if dep.by_content
                         else _fingerprint(dep.stage, params, {}, memo, root))
              for dep in spec.active_deps(params) if dep.identity}
    value = digest(name, params=param_values(spec.params, params),
                   code=code_hash(stage_code(name, root), root), inputs=inputs,
                   runtime=runtime)
    if not runtime:
        memo[name] = value
    return value


def release_fingerprint(params: Params) -> str:
    """Identity of a registry version: the register stage's fingerprint."""
    return fingerprint("register", params)


# ---------------------------------------------------------------------------- dvc.yaml


def render_dvc_yaml() -> str:
    """dvc.yaml for the stages above: `dvc repro` calls the same `tuneline` verbs."""
    import yaml

    stages = {}
    for spec in SPECS.values():
        stage: dict[str, Any] = {"cmd": " ".join(("tuneline", spec.name, *spec.cmd_options))}
        deps = [*stage_code(spec.name), *(d.path for d in spec.deps)]
        if deps:
            stage["deps"] = deps
        if spec.params:
            stage["params"] = list(spec.params)
        if spec.outs:
            stage["outs"] = [{o: {"persist": True}} if spec.persist else o for o in spec.outs]
        stage["metrics"] = [{f"${{paths.metrics}}/{spec.name}.json": {"cache": False}}]
        if spec.always_changed:
            stage["always_changed"] = True
        stages[spec.name] = stage
    head = ("# Rendered from components/stages/spec.py (`tuneline stages --dvc-yaml > dvc.yaml`):\n"
            "# `dvc repro` runs the same stage functions as `tuneline run`, with the same deps.\n")
    return head + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
