"""The code a stage runs, read from its imports: what its code fingerprint hashes.

A stage's code is the closure of the project modules its module imports, at the top or
inside a function, followed transitively: `import components.x.y` and `from components.x
import y` name `components/x/y.py` (or the package `components/x/__init__.py` when `y` is
not a module), and importing a submodule also runs its parent packages' `__init__`, which
are followed too. One package is not followed: `components/stages/__init__.py`, the table
of contents that gathers every stage function for the drivers; following it would make
each stage depend on every other. Editing a README, a test or a benchmark changes no
stage; editing any module a stage can reach makes that stage (and what comes after it)
run again.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from components.config import PROJECT_ROOT

PACKAGE = "components"
NOT_FOLLOWED = frozenset({"components/stages/__init__.py"})


def stage_module(name: str) -> str:
    """The file that holds stage `name`'s function."""
    return f"{PACKAGE}/stages/{name}.py"


def code_closure(start: str | tuple[str, ...], root: Path = PROJECT_ROOT, *,
                 at_import: bool = False) -> tuple[str, ...]:
    """Every project file (relative to `root`, sorted) reachable by imports from `start`.

    `at_import`: from the files `start` imports, follow only the imports that run when a
    module is imported (not those inside functions): what importing them loads.
    """
    starts = (start,) if isinstance(start, str) else start
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        if rel in NOT_FOLLOWED or not rel.endswith(".py"):
            continue
        path = root / rel
        todo.extend(_imports(path.as_posix(), path.stat().st_mtime_ns, root.as_posix(),
                             at_import and rel not in starts))
    return tuple(sorted(seen))


def _module_level(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run at import: everything outside function bodies."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return out


@lru_cache(maxsize=4096)
def _imports(path: str, mtime_ns: int, root: str, at_import: bool = False) -> tuple[str, ...]:
    """Project files one file imports (cached while the file is unchanged)."""
    base = Path(root)
    tree = ast.parse(Path(path).read_text(), filename=path)
    here = Path(path).relative_to(base).with_suffix("").parts
    found: list[str] = []
    for node in (_module_level(tree) if at_import else ast.walk(tree)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _module_files(alias.name.split("."), base)
        elif isinstance(node, ast.ImportFrom):
            parts = _absolute(node, here)
            if not parts:
                continue
            found += _module_files(parts, base)
            for alias in node.names:
                if (base.joinpath(*parts, alias.name + ".py").is_file()
                        or base.joinpath(*parts, alias.name, "__init__.py").is_file()):
                    found += _module_files([*parts, alias.name], base)
    return tuple(dict.fromkeys(found))


def _absolute(node: ast.ImportFrom, here: tuple[str, ...]) -> list[str]:
    """The dotted module of a `from ... import` as parts (relative imports resolved)."""
    parts = node.module.split(".") if node.module else []
    if node.level:
        package = list(here[:-1])
        package = package[: len(package) - (node.level - 1)]
        parts = package + parts
    return parts


def _module_files(parts: list[str], root: Path) -> list[str]:
    """The files importing module `parts` runs: each package's `__init__` and the module."""
    if not parts or parts[0] != PACKAGE:
        return []
    files = []
    for depth in range(1, len(parts) + 1):
        folder = root.joinpath(*parts[:depth])
        if (folder / "__init__.py").is_file():
            files.append(folder.joinpath("__init__.py").relative_to(root).as_posix())
        elif folder.with_suffix(".py").is_file() and depth == len(parts):
            files.append(folder.with_suffix(".py").relative_to(root).as_posix())
    return files
