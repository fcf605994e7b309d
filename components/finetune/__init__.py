"""Fine-tuning: one training loop (`train`) and strategies registered by name in STRATEGIES.

Importing this package registers every strategy module.
"""

import importlib

from components.finetune import gradient  # noqa: F401  (registers adamw)
from components.finetune.base import STRATEGIES, Strategy, register_strategy
from components.finetune.loggers import JsonlLogger, MetricsLogger, null_logger
from components.finetune.loop import TrainingDiverged, train

try:  # zeroth-order strategies land in their own module
    importlib.import_module("components.finetune.zeroth_order")
except ModuleNotFoundError as exc:  # pragma: no cover - only until that module exists
    if exc.name != "components.finetune.zeroth_order":
        raise

__all__ = ["STRATEGIES", "JsonlLogger", "MetricsLogger", "Strategy", "TrainingDiverged",
           "null_logger", "register_strategy", "train"]
