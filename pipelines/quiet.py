"""Keep library chatter that is expected on every run out of the flow and CLI output."""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_libraries() -> None:
    """Silence known-benign notices; real warnings and errors still show.

    - transformers' load report lists the freshly initialised classification head on
      every build: expected, since the head is what fine-tuning trains;
    - the ONNX exporter notes that torchvision ops are not registered (none are used);
    - onnxruntime suggests shape pre-processing before dynamic quantization, which does
      not apply to dynamic (weight-only) int8 quantization of this graph.
    """
    import transformers

    # The stage results and training progress are the run's story: INFO and up.
    logging.getLogger("tuneline").setLevel(logging.INFO)

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger().addFilter(_DropMessages("Please consider to run pre-processing"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropMessages("Please consider to run pre-processing"))
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
