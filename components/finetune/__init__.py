"""Fine-tuning: one training loop (`train`) and strategies registered by name in STRATEGIES.

Importing this package registers every strategy module.
"""

from components.finetune import cem, gradient, zeroth_order  # noqa: F401  (register strategies)
from components.finetune.base import STRATEGIES, Strategy, register_strategy
from components.finetune.loggers import JsonlLogger, MetricsLogger, null_logger
from components.finetune.loop import TrainingDiverged, train

__all__ = ["STRATEGIES", "JsonlLogger", "MetricsLogger", "Strategy", "TrainingDiverged",
           "null_logger", "register_strategy", "train"]
