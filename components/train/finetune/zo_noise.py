"""Seeded random directions for zeroth-order training, without per-step random numbers.

A straightforward MeZO step draws a fresh normal vector the size of the model four times
(perturb, perturb back, restore, update); on a 22.7M-parameter model that costs more than
the two forward passes it serves. Here every direction is read from one fixed table of
normals instead: a parameter is cut into chunks of at most `table_size // 2` values and
each chunk is the table slice starting at an offset drawn from the step's seed. Drawing a
few hundred offsets is free, a slice is a view, so applying z costs one fused pass.

Why the estimator stays correct: offsets are uniform over a circular table whose values
have exactly zero mean and unit mean square, so for one chunk E[z_i^2] = 1, and distinct
chunks use independent offsets, so E[z_i z_j] = 0 across chunks. Within a chunk,
E[z_i z_j] is the table's circular autocorrelation at lag j - i, of order
1/sqrt(table_size): negligible next to the estimator's own variance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-mixed 63-bit seed (splitmix64 finaliser per part).

    Seeds are a pure function of (run seed, step, sample), so a resumed run regenerates
    exactly the directions of an uninterrupted one without storing any state.
    """
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class NoiseTable:
    """A circular table of standard normals from which directions are sliced by seed.

    Args:
        size: number of distinct normals (memory: 1.5 * size float32 values).
        seed: seed of the table itself (fixed per run so resumes see the same table).
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 2:
            raise ValueError(f"noise table size must be >= 2, got {size}")
        gen = torch.Generator().manual_seed(mix_seed(seed, 0x7AB1E))
        values = torch.randn(size, generator=gen, dtype=torch.float64)
        # Exact zero mean and unit mean square make E[z_i^2] = 1 and cross-chunk
        # correlations zero in expectation over offsets.
        values -= values.mean()
        values /= values.pow(2).mean().sqrt()
        self.size = size
        self.chunk = size // 2
        # The first `chunk` values repeated at the end make every slice [o, o + chunk)
        # with o < size contiguous, i.e. the table behaves as a circle without copies.
        self.values = torch.cat([values, values[: self.chunk]]).to(torch.float32)


class ParamNoise:
    """Directions for a fixed list of parameters, as functions of a seed.

    Args:
        params: the trainable parameters, in a fixed order (the order is part of the
            direction's definition, so it must be the same on resume).
        table: the shared noise table.

    Attributes:
        std: per parameter, None (directions are z) or a tensor of its shape scaling z value
            by value (a diagonal Gaussian, as the cross-entropy method samples from).
    """

    def __init__(self, params: list[nn.Parameter], table: NoiseTable) -> None:
        self.params = params
        self.table = table
        device = params[0].device if params else torch.device("cpu")
        if table.values.device != device:  # directions are sliced where the weights live
            table.values = table.values.to(device)
        # Chunks of a parameter with rows hold whole rows, so every row's direction is
        # one contiguous table slice (cheap to gather for sparse embedding updates).
        self.chunk_len = [_chunk_len(p, table.chunk) for p in params]
        self.n_chunks = [max(1, math.ceil(p.numel() / c))
                         for p, c in zip(params, self.chunk_len, strict=True)]
        self.std: list[torch.Tensor | None] = [None] * len(params)
        self.first_chunk = [0]
        for n in self.n_chunks[:-1]:
            self.first_chunk.append(self.first_chunk[-1] + n)
        self._seed: int | None = None
        self._offsets: list[int] = []
        self._offsets_t = torch.empty(0, dtype=torch.long)

    def _load(self, seed: int) -> None:
        if seed == self._seed:
            return
        gen = torch.Generator().manual_seed(seed)
        total = sum(self.n_chunks)
        offsets = torch.randint(0, self.table.size, (total,), generator=gen)
        self._offsets = offsets.tolist()
        self._offsets_t = offsets.to(self.table.values.device)
        self._seed = seed

    def _slices(self, index: int, seed: int):
        """Yield (start, stop, table slice) covering parameter `index` chunk by chunk."""
        self._load(seed)
        numel, chunk = self.params[index].numel(), self.chunk_len[index]
        base = self.first_chunk[index]
        for c in range(self.n_chunks[index]):
            start = c * chunk
            stop = min(numel, start + chunk)
            off = self._offsets[base + c]
            yield start, stop, self.table.values[off: off + stop - start]

    def perturbed(self, index: int, seed: int, scale: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """`parameter + scale * z` (times `std` when set), written into `out` (reused
        scratch) or a new tensor."""
        src = self.params[index].detach()
        out = torch.empty_like(src) if out is None else out
        flat_src, flat_out = src.reshape(-1), out.view(-1)
        std = self.std[index]
        if std is None:
            for start, stop, z in self._slices(index, seed):
                torch.add(flat_src[start:stop], z, alpha=scale, out=flat_out[start:stop])
            return out
        flat_std = std.view(-1)
        for start, stop, z in self._slices(index, seed):
            torch.addcmul(flat_src[start:stop], z, flat_std[start:stop], value=scale,
                          out=flat_out[start:stop])
        return out

    def add_(self, index: int, seed: int, scale: float) -> None:
        """In place: parameter += scale * z (times `std` when set; one fused pass per chunk)."""
        flat = self.params[index].data.view(-1)
        std = self.std[index]
        for start, stop, z in self._slices(index, seed):
            if std is None:
                flat[start:stop].add_(z, alpha=scale)
            else:
                flat[start:stop].addcmul_(z, std.view(-1)[start:stop], value=scale)

    def direction(self, index: int, seed: int, out: torch.Tensor) -> torch.Tensor:
        """z itself for parameter `index` (without `std`), written into `out` (its shape)."""
        flat = out.view(-1)
        for start, stop, z in self._slices(index, seed):
            flat[start:stop].copy_(z)
        return out

    def rows(self, index: int, seed: int, rows: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """z restricted to `rows` (first-dimension indices): shape (len(rows), *row shape).

        Row r holds the same values the dense direction holds there, so sparse and dense
        use of one parameter agree. `out` (len(rows) x row width, contiguous) receives the
        values instead of a new tensor.
        """
        if self.std[index] is not None:
            raise ValueError("row-sparse directions do not support a per-value std")
        self._load(seed)
        param = self.params[index]
        width = param.numel() // param.shape[0]
        rows_per_chunk = self.chunk_len[index] // width
        if rows_per_chunk == 0:
            raise ValueError(f"row width {width} exceeds the noise chunk {self.table.chunk}")
        base = self.first_chunk[index]
        chunk_offsets = self._offsets_t[base: base + self.n_chunks[index]]
        starts = chunk_offsets[rows // rows_per_chunk] + (rows % rows_per_chunk) * width
        # Every window [start, start + width) of the table, as a view: one gather per row.
        values = self.table.values
        windows = values.as_strided((values.numel() - width + 1, width), (1, 1))
        if out is None:
            return windows.index_select(0, starts).view(len(rows), *param.shape[1:])
        torch.index_select(windows, 0, starts, out=out.view(len(rows), width))
        return out

    def add_rows_(self, index: int, seed: int, rows: torch.Tensor, scale: float) -> None:
        """In place: parameter[rows] += scale * z[rows]."""
        self.params[index].data.index_add_(0, rows, self.rows(index, seed, rows), alpha=scale)


def _chunk_len(param: torch.Tensor, chunk: int) -> int:
    """Values per chunk: `chunk`, rounded down to whole rows when a row fits."""
    if param.dim() < 2:
        return chunk
    width = param.numel() // max(1, param.shape[0])
    return chunk if width == 0 or width > chunk else (chunk // width) * width
