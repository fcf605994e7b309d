"""Fine-tuning: one training loop (`train`) and strategies registered by name in STRATEGIES.

Importing this package registers every strategy module.
"""

from components.train.finetune import cem, gradient, zeroth_order  # noqa: F401  (register strategies)
from components.train.finetune.base import STRATEGIES, Strategy, register_strategy
from components.train.finetune.loggers import JsonlLogger, MetricsLogger, null_logger
from components.train.finetune.loop import TrainingDiverged, train

__all__ = ["STRATEGIES", "JsonlLogger", "MetricsLogger", "Strategy", "TrainingDiverged",
           "null_logger", "register_strategy", "train"]
