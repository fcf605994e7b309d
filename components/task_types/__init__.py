"""What is predicted: one module per task type, registered by name.

`task_type(params.task.type)` (or `of_bundle(export_config)` for an exported bundle) is
what every engine asks instead of testing a task name; see `base` for the interface.
Importing this package registers the built-in task types. Adding one = one module with a
`@register_task_type` class, imported here.
"""

from components.task_types import sequence, token  # noqa: F401  (register task types)
from components.task_types.base import (
    TASK_TYPES,
    ParityRows,
    Runtime,
    Scores,
    TaskType,
    of_bundle,
    register_task_type,
    task_type,
)

__all__ = ["TASK_TYPES", "ParityRows", "Runtime", "Scores", "TaskType", "of_bundle",
           "register_task_type", "task_type"]
