"""Keep library chatter that is expected on every run out of the flow and CLI output."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

# The level of the `tuneline` loggers (stage results, training progress) in this process:
# INFO unless `tuneline -q` (WARNING) or `tuneline -v` (DEBUG) chose another.
_level = logging.INFO


def log_level() -> int:
    """The level the `tuneline` loggers get in this process."""
    return _level


@contextlib.contextmanager
def use_log_level(level: int) -> Iterator[None]:
    """For the duration: the `tuneline` loggers at `level`; above INFO, Prefect's own lines
    (flow run created, finished) too. Everything is put back afterwards."""
    global _level
    saved = _level, os.environ.get("PREFECT_LOGGING_LEVEL")
    loggers = [logging.getLogger("tuneline")]
    if level > logging.INFO:
        # Prefect reads the variable when it is imported; once imported, its loggers.
        os.environ["PREFECT_LOGGING_LEVEL"] = logging.getLevelName(level)
        if "prefect" in sys.modules:
            loggers.append(logging.getLogger("prefect"))
    levels = [logger.level for logger in loggers]
    _level = level
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        _level = saved[0]
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)
        if level > logging.INFO:
            if saved[1] is None:
                os.environ.pop("PREFECT_LOGGING_LEVEL", None)
            else:
                os.environ["PREFECT_LOGGING_LEVEL"] = saved[1]


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_libraries() -> None:
    """Silence known-benign notices; real warnings and errors still show. Under
    `tuneline -v` (DEBUG) nothing is silenced.

    - transformers' load report lists the freshly initialised classification head on
      every build: expected, since the head is what fine-tuning trains;
    - the ONNX exporter notes that torchvision ops are not registered (none are used);
    - onnxruntime suggests shape pre-processing before dynamic quantization, which does
      not apply to dynamic (weight-only) int8 quantization of this graph.
    """
    # The stage results and training progress are the run's story: INFO and up (or what
    # -q / -v chose).
    logging.getLogger("tuneline").setLevel(_level)
    if _level <= logging.DEBUG:
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger().addFilter(_DropMessages("Please consider to run pre-processing"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropMessages("Please consider to run pre-processing"))
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
