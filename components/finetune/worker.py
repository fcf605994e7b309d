"""One rank of a distributed fine-tune: `python -m components.finetune.worker JOB.json`.

Started by torchrun (distributed.launch) from the finetune stage; the job file holds the
validated params and the stage's paths. Rank 0 logs to the stage's MLflow run, saves the
model and writes the final metrics to the job's `result` path (temp file, then rename).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from components.config import validate_params
from components.io import atomic_write_json, read_json


def main(job_path: str) -> None:
    from components import tracking
    from components.finetune import distributed, train

    job = read_json(Path(job_path))
    params = validate_params(job["params"])
    d = distributed.init(params)
    logging.basicConfig(level=logging.INFO if d.is_main else logging.WARNING,
                        format=f"[rank {d.rank}] %(message)s")
    try:
        logger = tracking.MlflowLogger(params, job["run_id"]) if d.is_main and job.get(
            "run_id") else None
        metrics = train(params, job["prepared"], job["model"], init_dir=job.get("init_dir"),
                        checkpoint_dir=job["checkpoints"], resume=bool(job["resume"]),
                        logger=logger, dist=d)
        if d.is_main:
            atomic_write_json(Path(job["result"]), {**metrics, "ranks": d.world})
    finally:
        distributed.shutdown(d)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m components.finetune.worker JOB.json")
    main(sys.argv[1])
