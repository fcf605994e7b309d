"""The docs site: generated pages equal what the code renders, and the site builds."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from components.config import PROJECT_ROOT
from tools.render_docs import PAGES, params_entries, rendered


@pytest.mark.parametrize("page", sorted(PAGES))
def test_committed_reference_pages_equal_their_rendering(page):
    assert PAGES[page].read_text() == rendered()[page], (
        f"{PAGES[page]} is stale: run `python tools/render_docs.py`")


def test_every_params_key_is_in_the_reference():
    from components.config import load_params

    documented = {e["key"] for e in params_entries((PROJECT_ROOT / "params.yaml").read_text())}
    dump = load_params().model_dump(mode="json")

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in (
                    "gate.min_metrics", "gate.max_drop_vs_champion",
                    "gate.non_inferiority_margin"):
                yield from leaves(value, path + ".")
            else:
                yield path
    missing = {k for k in leaves(dump) if k not in documented
               and not any(k.startswith(d + ".") for d in documented)}
    assert not missing, sorted(missing)


def test_the_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(PROJECT_ROOT / ".venv" / "bin")) or shutil.which(
        "mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
