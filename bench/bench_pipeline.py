"""A fresh clone's time to a promoted model, and the orchestration cost of that run.

`git clone` of this repository, then `make install` (creates .venv and installs), then
`tuneline run --json` (builds the demo corpus, retrains with params.yaml defaults, gates,
promotes) - the same steps `make run` takes, timed apart. The flow times the code inside
each stage; from that one run:
  - startup_s   = run wall time - flow body time: Prefect's temporary server starting
                  (paid once per process; a deployed server never pays it per run);
  - overhead_s  = flow body time - summed stage seconds: what orchestrating the stages
                  costs. Goal: <= 5% and <= 10 s.
Goal for clone -> promoted model: <= 10 minutes.

    .venv/bin/python -m bench.bench_pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PROJECT_ROOT, write_result

OVERHEAD_GOAL_S, OVERHEAD_GOAL_PCT, CLONE_GOAL_S = 10.0, 5.0, 600.0


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def measure(workdir: Path) -> dict:
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env["PREFECT_HOME"] = str(workdir / "prefect-home")
    install_s, _ = _timed(["make", "install"], clone, env)
    run_s, out = _timed([str(clone / ".venv/bin/tuneline"), "run", "--json", "-o",
                         str(workdir / "run.json")], clone, env)
    result = json.loads((workdir / "run.json").read_text())
    stages = sum(result["stage_seconds"].values())
    flow_s = result["flow_seconds"]
    overhead = flow_s - stages
    return {
        "fresh_clone": {"install_s": install_s, "run_s": run_s, "total_s": install_s + run_s,
                        "status": result["status"], "version": result["version"],
                        "goal_s": CLONE_GOAL_S,
                        "goal_met": result["status"] == "promoted"
                        and install_s + run_s <= CLONE_GOAL_S,
                        "summary_tail": out.strip().splitlines()[-10:]},
        "orchestration": {"run_wall_s": result["wall_seconds"], "flow_s": flow_s,
                          "startup_s": result["wall_seconds"] - flow_s,
                          "stage_seconds": result["stage_seconds"], "stages_sum_s": stages,
                          "overhead_s": overhead, "overhead_pct": 100 * overhead / flow_s,
                          "goal": {"max_s": OVERHEAD_GOAL_S, "max_pct": OVERHEAD_GOAL_PCT},
                          "goal_met": overhead <= OVERHEAD_GOAL_S
                          and 100 * overhead / flow_s <= OVERHEAD_GOAL_PCT},
        "model": {"steps": result["steps"], "test": result["test"],
                  "gate_reasons": result["gate_reasons"]},
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_result("pipeline", measure(Path(tmp)))


if __name__ == "__main__":
    main()
