"""The plain transformers module inside a peft wrapper: for saving and for export.

Torch is not imported here: export and saving hand in modules they already hold.
"""

from __future__ import annotations

from typing import Any


def base_model_of(model: Any) -> Any:
    """The underlying transformers model (unwraps a peft wrapper)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def merge_for_export(model: Any) -> Any:
    """A plain transformers module for export: LoRA/IA3 merged in, wrapper removed.

    Prompt and prefix tuning cannot be merged (they add virtual tokens); the peft module is
    returned unchanged for them.
    """
    if getattr(model, "peft_config", None) and hasattr(model, "merge_and_unload"):
        method = model.peft_config["default"].peft_type.value.lower()
        if method in ("lora", "ia3"):
            return model.merge_and_unload()
    return model
