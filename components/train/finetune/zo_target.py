"""Which trainable parameters a zeroth-order strategy perturbs (`finetune.<strategy>.target`).

A zeroth-order estimate sees the gradient through one random direction at a time, and its
variance grows with the number of values perturbed: on a 10.8M-value model a step moves
mostly noise. Restricting the perturbation to a few tens of thousands of values that
matter for the task (BitFit: biases and LayerNorms) or to the top of the network keeps the
estimate informative within the few thousand steps a CPU can afford.

The target narrows `trainable_parameters(model)` (what `peft.method` and
`finetune.freeze_embeddings` left trainable): `all` keeps them, `bitfit` keeps biases,
LayerNorms and the head, `top_layers` the last layers, the [CLS] pooler and the head. The
head is part of every target: it is tiny, and once the backbone's features move, the head
fitted to the old ones (a linear probe) has to follow them.
"""

from __future__ import annotations

import re

from torch import nn

LAYER_NAME = re.compile(r"\.layers?\.(\d+)\.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """Distance of each parameter from the output: 0 for the head, 1 for the last
    transformer layer, ..., num_layers + 1 for the embeddings.

    Parameters named neither `...layer.<i>...` nor `...embeddings...` (head, pooler,
    PEFT prompt encoders) count as the top.
    """
    layer = {n: int(m.group(1)) for n in names if (m := LAYER_NAME.search(n))}
    top = max(layer.values(), default=-1) + 1
    depths = {}
    for name in names:
        if name in layer:
            depths[name] = top - layer[name]
        elif "embeddings" in name and "prompt" not in name:
            depths[name] = top + 1
        else:
            depths[name] = 0
    return depths


TARGETS = ("all", "bitfit", "top_layers")
_NORMS = ("LayerNorm.", "layer_norm.", "layernorm.", "norm.")
# transformers' *ForSequenceClassification heads (PEFT keeps a trainable copy inside them).
_HEADS = ("classifier.", "score.")


def is_bias_or_norm(name: str) -> bool:
    """A bias vector or a LayerNorm scale/shift (BitFit's parameters)."""
    return name.endswith("bias") or any(n in name for n in _NORMS)


def is_head(name: str) -> bool:
    """A parameter of the classification head (not the [CLS] pooler before it)."""
    return any(h in name for h in _HEADS)


def select_target(params: list[tuple[str, nn.Parameter]], target: str, top_layers: int,
                  ) -> list[tuple[str, nn.Parameter]]:
    """The subset of `params` (name, parameter) that `target` perturbs, in their order.

    Raises:
        ValueError: unknown target, `top_layers` beyond the model's depth, or a target that
            leaves nothing but the head (e.g. `bitfit` on LoRA adapters, which have no
            biases): the message says which target to use instead.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown zeroth-order target {target!r} (known: {', '.join(TARGETS)})")
    if target == "all":
        return list(params)
    depths = layer_depths([n for n, _ in params])
    n_layers = max((depths[n] for n, _ in params if LAYER_NAME.search(n)), default=0)
    if target == "bitfit":
        chosen = [(n, p) for n, p in params if is_head(n) or is_bias_or_norm(n)]
    else:
        if top_layers > n_layers:
            raise ValueError(f"target top_layers: top_layers={top_layers} but the trainable "
                             f"parameters span {n_layers} layer(s)")
        chosen = [(n, p) for n, p in params if depths[n] <= top_layers]
    if all(depths[n] == 0 for n, _ in chosen):  # the head (and pooler) only
        raise ValueError(f"target {target} leaves only the head among the trainable "
                         "parameters (PEFT adapters have no biases or LayerNorms of their "
                         "own): use target all to train the adapters")
    return chosen


def freeze_outside(params: list[tuple[str, nn.Parameter]],
                   chosen: list[tuple[str, nn.Parameter]]) -> None:
    """requires_grad=False on every parameter of `params` not in `chosen`, so checkpoints,
    the shipped `trainable_params` count and the best-weights copy cover the target only."""
    keep = {id(p) for _, p in chosen}
    for _, p in params:
        if id(p) not in keep:
            p.requires_grad_(False)
