"""A stage's code fingerprint covers every module it can import, and nothing else.

Each check edits files in a temporary copy of the project and recomputes fingerprints
there: an edit to any module in a stage's import closure makes that stage and only the
stages after it stale; an edit to a README, a test or a benchmark changes no stage.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from components.closure import code_closure, stage_module
from components.config import PROJECT_ROOT, load_params
from components.stages.spec import ORDER, SPECS, fingerprint, stage_code

COPIED = ("components", "deploy")


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project-copy")
    for name in COPIED:
        shutil.copytree(PROJECT_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "params.yaml"):
        shutil.copy2(PROJECT_ROOT / name, root / name)
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    return root


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    # Marker-only switches off: every stage's own code counts in its fingerprint.
    folder = tmp_path_factory.mktemp("fp")
    return load_params(overrides=[f"paths.{p}={folder / p}" for p in (
        "input", "prepared", "pretrained", "model", "compressed", "eval", "export", "gate")]
        + ["pretrain.enabled=true", "compress.enabled=true"])


def downstream(stages: set[str]) -> set[str]:
    """The stages whose fingerprint chain reaches one of `stages` (themselves included)."""
    out = set(stages)
    changed = True
    while changed:
        changed = False
        for name, spec in SPECS.items():
            if name not in out and any(d.stage in out and not d.by_content and d.identity
                                       for d in spec.deps):
                out.add(name)
                changed = True
    return out


def fingerprints(params, root: Path) -> dict[str, str]:
    return {name: fingerprint(name, params, root=root) for name in ORDER}


def test_every_module_a_stage_imports_is_in_its_fingerprint(copy, params):
    before = fingerprints(params, copy)
    modules = sorted({f for name in ORDER for f in stage_code(name, copy)})
    assert "components/data/files.py" in stage_code("prepare", copy)
    assert "components/data/near_dup.py" in stage_code("prepare", copy)
    assert "components/config.py" in stage_code("ingest", copy)
    assert "components/registry/pyfunc_model.py" in stage_code("register", copy)
    for rel in modules:
        path = copy / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        try:
            after = fingerprints(params, copy)
        finally:
            path.write_bytes(original)
        changed = {n for n in ORDER if after[n] != before[n]}
        users = {n for n in ORDER if rel in stage_code(n, copy)}
        assert users <= changed, (rel, users - changed)           # its users rerun
        assert changed <= downstream(users), (rel, changed - downstream(users))  # only them
    assert fingerprints(params, copy) == before


def test_docs_tests_and_benchmarks_change_no_stage(copy, params):
    before = fingerprints(params, copy)
    (copy / "README.md").write_text("edited\n")
    (copy / "tests" / "test_x.py").write_text("def test_x():\n    assert True\n")
    (copy / "bench").mkdir(exist_ok=True)
    (copy / "bench" / "bench_x.py").write_text("print('x')\n")
    assert fingerprints(params, copy) == before


def test_a_new_import_inside_a_function_joins_the_closure(copy):
    module = copy / "components" / "stages" / "ingest.py"
    original = module.read_text()
    before = code_closure(stage_module("ingest"), copy)
    outside = sorted({p.relative_to(copy).as_posix()
                      for p in (copy / "components").glob("*.py")} - set(before))[0]
    name = Path(outside).stem
    module.write_text(original + f"\n\ndef _late():\n    from components import {name}\n"
                      f"    return {name}\n")
    try:
        assert outside in code_closure(stage_module("ingest"), copy)
    finally:
        module.write_text(original)


def test_components_import_stage_modules_not_the_stage_package():
    """The closure does not follow components/stages/__init__.py; a component importing a
    name through it would hide that name's module from the fingerprint."""
    for path in (PROJECT_ROOT / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "components.stages":
                names = [a.name for a in node.names]
                assert all((PROJECT_ROOT / "components/stages" / f"{n}.py").is_file()
                           for n in names), (path, names)


@pytest.mark.integration
def test_tuneline_stages_shows_will_run_after_an_edit_to_a_module_prepare_imports(tmp_path):
    """The CLI on a copy of the project: prepare is current, then near_dup.py changes."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import tiny_rows

    root = tmp_path / "copy"
    for name in (*COPIED, "pipelines"):
        shutil.copytree(PROJECT_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(20)))
    sets = [f"paths.raw={tmp_path / 'raw.jsonl'}", f"paths.lock={tmp_path / 'lock'}",
            *[f"paths.{p}={tmp_path / p}" for p in ("input", "prepared", "metrics")]]
    args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def cli(*words: str) -> str:
        proc = subprocess.run([sys.executable, "-c", "from pipelines.cli import app; app()",
                               *words, *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    def state(stage: str) -> str:
        line = next(x for x in cli("stages").splitlines() if x.split()[:1] == [stage])
        return "will run" if "will run" in line else "current"

    cli("ingest")
    cli("prepare")
    assert state("prepare") == "current"
    with open(root / "components" / "data" / "near_dup.py", "a") as fh:
        fh.write("\n# a changed comment is a changed module\n")
    assert state("prepare") == "will run"


def test_no_stage_module_imports_another_stage():
    """What one stage needs of another's output it asks components/stages/chain.py."""
    stage_files = {f"components/stages/{name}.py" for name in ORDER}
    for rel in stage_files:
        imported = set(code_closure(rel))
        # the closure follows imports transitively: no path leads to another stage
        assert imported & stage_files == {rel}, (rel, sorted(imported & stage_files))


def test_no_two_component_modules_import_each_other():
    """The import graph of components/ (imports inside functions included) has no cycle."""
    import sys

    root = PROJECT_ROOT
    files = sorted(p.relative_to(root).as_posix() for p in (root / "components").rglob("*.py"))

    def target(parts: list[str]) -> str | None:
        path = root.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py").relative_to(root).as_posix()
        if (path / "__init__.py").is_file():
            return (path / "__init__.py").relative_to(root).as_posix()
        return None

    edges: dict[str, set[str]] = {f: set() for f in files}
    for rel in files:
        here = Path(rel).with_suffix("").parts
        for node in ast.walk(ast.parse((root / rel).read_text())):
            names: list[list[str]] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module.split(".") if node.module else []
                if node.level:
                    base = list(here[:-node.level]) + base
                names = [[*base, a.name] if target([*base, a.name]) else base
                         for a in node.names]
            for parts in names:
                found = target(parts) if parts and parts[0] == "components" else None
                if found and found != rel:
                    edges[rel].add(found)

    sys.setrecursionlimit(10_000)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for f in files:
        if f not in state:
            visit(f)
