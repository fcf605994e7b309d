"""Domain-adaptive pretraining of the backbone on unlabeled text.

Objectives are plug-ins registered by name in OBJECTIVES (`pretrain.objective`): `mlm`
(masked-LM, mlm.py) and `simcse` (contrastive, simcse.py). One loop (loop.py) runs an
optional head-only warm-up, then trains the encoder, and saves a plain backbone folder that
`build_classifier(..., init_dir=out_dir)` loads. probe.py scores a backbone with a linear
probe on frozen features: the pretrain stage's guard.
"""

from components.train.pretrain import mlm, simcse  # noqa: F401  (register objectives)
from components.train.pretrain.base import (
    METRICS_FILE,
    OBJECTIVES,
    Objective,
    register_objective,
    save_backbone,
    split_heldout,
)
from components.train.pretrain.loop import PretrainDiverged, adapt_backbone, set_phase
from components.train.pretrain.mlm import mask_tokens
from components.train.pretrain.probe import judge, probe_backbone

__all__ = ["METRICS_FILE", "OBJECTIVES", "Objective", "PretrainDiverged", "adapt_backbone",
           "judge", "mask_tokens", "probe_backbone", "register_objective", "save_backbone",
           "set_phase", "split_heldout"]
