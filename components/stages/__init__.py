"""The stage layer: one function per stage, the only implementation of each stage's glue.

The `tuneline` verbs, the Prefect tasks and the `dvc.yaml` stages all call these and add
nothing else (the CLI parses and prints, the tasks add retries and logging, DVC adds its
own caching). Each function takes the validated params, writes its outputs atomically,
skips when its output already holds the result of the same inputs (see spec.py), and
returns a StageResult.
"""

from components.stages.base import StageResult, StaleInputError
from components.stages.chain import PretrainMissingError
from components.stages.compress import compress
from components.stages.evaluate import evaluate
from components.stages.export import export
from components.stages.finetune import finetune
from components.stages.gate import gate
from components.stages.ingest import check_inputs, ingest
from components.stages.prepare import prepare
from components.stages.pretrain import pretrain
from components.stages.register import find_registered, register
from components.stages.spec import ORDER, SPECS, fingerprint, release_fingerprint
from components.stages.version import (
    DataRemoteError,
    DataVersionError,
    restore_data,
    version_data,
)

__all__ = ["ORDER", "SPECS", "DataRemoteError", "DataVersionError", "PretrainMissingError",
           "StageResult",
           "StaleInputError", "check_inputs", "compress", "evaluate", "export", "find_registered",
           "fingerprint", "finetune", "gate", "ingest", "prepare", "pretrain", "register",
           "release_fingerprint", "restore_data", "version_data"]
