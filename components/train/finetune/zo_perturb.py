"""Evaluate the loss at theta + scale * z without ever writing theta.

The textbook MeZO step perturbs the weights in place (+eps z, -2 eps z, +eps z). In
float32 that restore is not exact: (theta + eps z) - 2 eps z + eps z differs from theta in
the last bits, so "perturb then restore" drifts and a resumed run would not match. Here
the perturbation is applied on the fly instead: a forward pre-hook on each module that owns
a trainable parameter swaps in `theta + scale * z` for the duration of that module's
forward, and puts the original Parameter back afterwards. theta is never modified, so the
restore is exact by construction and there is no restore pass at all. Only one module's
perturbed weight exists at a time (at most a few MB), so memory stays at inference level.

Embedding matrices (when `sparse_embeddings`) are perturbed only on the rows the batch
looks up: the loss does not depend on the others, so perturbing them would only add noise
to the update, and gathering ~1k rows is far cheaper than touching 30k.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from components.train.finetune.zo_noise import ParamNoise

_CONTAINERS = (nn.ParameterDict, nn.ParameterList)


@dataclass
class _Owner:
    """Where a trainable parameter lives: `module._parameters[name]`."""

    module: nn.Module
    name: str
    index: int
    sparse_rows: bool
    slot: int = 0
    depth: int = 0


@dataclass
class Perturbation:
    """A model wired for on-the-fly perturbation of its trainable parameters.

    Attributes:
        noise: the seeded directions of the trainable parameters.
        rows: after a forward, the embedding rows each sparse parameter used (by index).
    """

    model: nn.Module
    noise: ParamNoise
    sparse_embeddings: bool
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    _targets: dict[nn.Module, list[_Owner]] = field(default_factory=dict)
    _scratch: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._targets = _find_owners(self.model, self.noise.params, self.sparse_embeddings)

    @contextlib.contextmanager
    def applied(self, seed: int, scale: float) -> Iterator[None]:
        """Within the block, every forward of the model sees theta + scale * z(seed)."""
        self.rows = {}
        handles = []
        for target, owners in self._targets.items():
            dense = [o for o in owners if not o.sparse_rows]
            sparse = [o for o in owners if o.sparse_rows]
            if dense:
                handles.append(target.register_forward_pre_hook(
                    self._swap_in(dense, seed, scale)))
                handles.append(target.register_forward_hook(self._swap_out(dense)))
            if sparse:
                handles.append(target.register_forward_hook(
                    self._sparse_rows(sparse[0], seed, scale), with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            # A forward that raised skipped its post-hook: put every original back.
            for owners in self._targets.values():
                for o in owners:
                    o.module._parameters[o.name] = self.noise.params[o.index]

    def _swap_in(self, owners: list[_Owner], seed: int, scale: float):
        def hook(module, args):
            for o in owners:
                o.module._parameters[o.name] = self.noise.perturbed(
                    o.index, seed, scale, out=self._scratch_for(o))
        return hook

    def _scratch_for(self, owner: _Owner) -> torch.Tensor:
        """A reusable buffer for a perturbed copy of `owner`'s parameter.

        Fresh allocations would page-fault on every forward (tens of MB of new pages per
        pass on MiniLM); reused buffers stay mapped and mostly in cache. Two swaps alive at
        the same time are in the same module (different slots) or in nested modules
        (different depths), so one flat buffer per (dtype, slot, depth), sized for the
        largest parameter it serves, is enough: on BERT the FFN's (1536, 384) and
        (384, 1536) weights share one buffer instead of holding two.
        """
        p = self.noise.params[owner.index]
        key = (p.dtype, owner.slot, owner.depth)
        buf = self._scratch.get(key)
        if buf is None:
            size = max(q.numel() for q in self._params_at(key))
            buf = self._scratch[key] = torch.empty(size, dtype=p.dtype, device=p.device)
        return buf[: p.numel()].view(p.shape)

    def _params_at(self, key: tuple) -> list[torch.Tensor]:
        """Every dense trainable parameter whose swaps use the scratch buffer `key`."""
        return [self.noise.params[o.index] for owners in self._targets.values()
                for o in owners if not o.sparse_rows
                and (self.noise.params[o.index].dtype, o.slot, o.depth) == key]

    def _swap_out(self, owners: list[_Owner]):
        def hook(module, args, output):
            for o in owners:
                o.module._parameters[o.name] = self.noise.params[o.index]
        return hook

    def _sparse_rows(self, owner: _Owner, seed: int, scale: float):
        """Forward hook on an nn.Embedding: overwrite its output with perturbed used rows.

        Everything is written into buffers that already exist (the lookup's own output
        and two reused scratch buffers): on this kind of VM a fresh MB-sized tensor costs
        more in page faults than the arithmetic on it.
        """
        def hook(module, args, kwargs, output):
            ids = args[0] if args else kwargs["input"]
            used, inverse = torch.unique(ids, return_inverse=True)
            weight = self.noise.params[owner.index]
            width = weight.shape[1]
            z, w = self._row_buffers(weight, len(used))
            self.noise.rows(owner.index, seed, used, out=z)
            torch.index_select(weight.detach(), 0, used, out=w)
            rows = w.add_(z, alpha=scale)
            if module.padding_idx is not None:
                # nn.Embedding's contract: the padding row is never trained.
                keep = used != module.padding_idx
                rows[~keep] = weight[module.padding_idx]
                used = used[keep]
            prev = self.rows.get(owner.index)
            self.rows[owner.index] = used if prev is None else torch.unique(
                torch.cat([prev, used]))
            # The lookup's output is a fresh contiguous (..., width) tensor of weight's dtype.
            torch.index_select(rows, 0, inverse.view(-1), out=output.view(-1, width))
            return output
        return hook

    def _row_buffers(self, weight: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reused (n, width) buffers for gathered rows, grown when a batch needs more."""
        key = ("rows", weight.dtype, weight.shape[1])
        buf = self._scratch.get(key)
        if buf is None or buf.shape[0] < 2 * n:
            buf = self._scratch[key] = torch.empty(2 * n, weight.shape[1], dtype=weight.dtype,
                                                   device=weight.device)
        return buf[:n], buf[n: 2 * n]

    @property
    def sparse_indices(self) -> list[int]:
        """Parameters perturbed only on the rows a forward used (by index)."""
        return sorted(o.index for owners in self._targets.values() for o in owners
                      if o.sparse_rows)

    @property
    def has_sparse(self) -> bool:
        return bool(self.sparse_indices)

    def add_noise_(self, seed: int, scale: float) -> None:
        """In place: theta += scale * z(seed), on the rows of the last forward for sparse ones.

        Call it right after the forwards that used `seed` (the recorded rows are theirs).
        """
        sparse = {o.index for owners in self._targets.values() for o in owners if o.sparse_rows}
        for i in range(len(self.noise.params)):
            if i in sparse:
                # No recorded rows means the embedding was not used: its z does not matter.
                if i in self.rows:
                    self.noise.add_rows_(i, seed, self.rows[i], scale)
            else:
                self.noise.add_(i, seed, scale)


def _find_owners(model: nn.Module, params: list[nn.Parameter],
                 sparse_embeddings: bool) -> dict[nn.Module, list[_Owner]]:
    """Map each hook target module to the trainable parameters it must swap."""
    index_of = {id(p): i for i, p in enumerate(params)}
    parents = {child: mod for mod in model.modules() for child in mod.children()}
    depth = {model: 0}
    for mod in model.modules():  # parents come before children in this order
        for child in mod.children():
            depth.setdefault(child, depth[mod] + 1)
    targets: dict[nn.Module, list[_Owner]] = {}
    found: set[int] = set()
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None or id(p) not in index_of or id(p) in found:
                continue
            found.add(id(p))
            i = index_of[id(p)]
            sparse = (sparse_embeddings and isinstance(module, nn.Embedding)
                      and name == "weight" and module.max_norm is None)
            # Parameter containers have no forward; the module that reads them does.
            target = parents.get(module, module) if isinstance(module, _CONTAINERS) else module
            owners = targets.setdefault(target, [])
            owners.append(_Owner(module, name, i, sparse, len(owners), depth[target]))
    missing = len(params) - len(found)
    if missing:
        raise ValueError(f"{missing} trainable parameter(s) are not owned by any module of "
                         "the model; zeroth-order strategies cannot perturb them")
    return targets
