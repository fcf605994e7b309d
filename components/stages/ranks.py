"""One rank of the distributed finetune stage, started by torchrun (a driver, not a stage).

    python -m components.stages.ranks JOB.json
        From the finetune stage (`finetune.nproc` > 1 on one machine): the job file holds
        the validated params and the stage's paths. Rank 0 logs to the stage's MLflow run,
        saves the model and writes the final metrics to the job's `result` path.

    python -m components.stages.ranks --params params.yaml [--set k=v ...] [--resume]
        The whole finetune stage as N ranks on several machines, when torchrun is started
        on each by the cluster (deploy/k8s/base/training.yaml): rank 0 runs the stage (MLflow
        run, record, model), the others train beside it. Every rank must see the same
        project folder (prepared data, checkpoints, model), e.g. a shared volume.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from components.config import validate_params
from components.io import atomic_write_json, read_json


def main(job_path: str) -> None:
    from components.registry import tracking
    from components.train.finetune import distributed, train

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


def stage_rank(params_file: str | None, overrides: list[str], resume: bool) -> None:
    """This rank's part of the finetune stage under an outside torchrun."""
    from components.config import load_params
    from components.stages.base import stored_result
    from components.stages.chain import starting_backbone
    from components.stages.finetune import finetune
    from components.stages.spec import fingerprint
    from components.train.finetune import distributed, train

    params = load_params(params_file, overrides)
    d = distributed.init(params)
    logging.basicConfig(level=logging.INFO if d.is_main else logging.WARNING,
                        format=f"[rank {d.rank}] %(message)s")
    try:
        if params.finetune.nproc != d.world:
            raise ValueError(f"finetune.nproc is {params.finetune.nproc} but torchrun started "
                             f"{d.world} ranks; set finetune.nproc={d.world} (it fixes the "
                             "global batch and is part of the model's fingerprint)")
        # Every rank reads the same folder: all train, or none does (a Job restarted after
        # the model was saved has nothing left to do).
        if stored_result(Path(params.paths.model), fingerprint("finetune", params)) is not None:
            return
        if d.is_main:
            finetune(params, resume=resume, force=True)
        else:
            # The same rule as rank 0's stage: the adapted backbone, or the original when
            # pretraining is off or its guard kept the original.
            init = starting_backbone(params)
            train(params, params.paths.prepared, params.paths.model, init_dir=init,
                  checkpoint_dir=params.paths.checkpoints, resume=resume, dist=d)
    finally:
        distributed.shutdown(d)


def _cli(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m components.stages.ranks")
    ap.add_argument("job", nargs="?", help="job file written by the finetune stage")
    ap.add_argument("--params", help="params.yaml (stage mode)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override a param: finetune.strategy=mezo (repeatable)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    if args.job:
        main(args.job)
    else:
        stage_rank(args.params, args.overrides, args.resume)


if __name__ == "__main__":
    _cli(sys.argv[1:])
