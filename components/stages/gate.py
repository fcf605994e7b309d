"""Stage `gate`: judge the exported bundle; the @champion is re-scored on the same split.

Which champion the verdict was measured against is an input of this stage (its version
and sha256 enter the fingerprint), so a verdict is reused only while the champion it was
measured against is still the champion.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.config import Params
from components.stages.base import StageResult, run_stage


def gate(params: Params, *, force: bool = False) -> StageResult:
    """Write verdict.json / verdict.md to `paths.gate`; the verdict is the result."""
    from components.registry.versions import champion_ref, download_bundle
    from components.release.gate import run_gate

    champion = champion_ref(params)

    def compute(out: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="tuneline-champion-") as tmp:
            bundle = (download_bundle(params, champion["version"], Path(tmp) / "champion")[1]
                      if champion else None)
            verdict = run_gate(params.paths.export, params.paths.prepared, params, bundle,
                               out_dir=out)
        return {**verdict, "champion_version": champion["version"] if champion else None}

    return run_stage("gate", params, compute, describe, force=force,
                     runtime={"champion": champion})


def describe(verdict: dict[str, Any]) -> str:
    from components.release.gate import decision_line

    return decision_line(verdict)
