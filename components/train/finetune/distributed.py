"""Device, precision and the ranks of a data-parallel run (torch.distributed).

One process per rank, started by `torchrun` (see `launch`), which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Every rank builds the same global batch (the
per-rank batch x the world size) from the same seeded loader and takes its own slice, so
N ranks train on exactly the batches one process with the global batch would see:

- gradient strategies wrap the model in DistributedDataParallel (gradients all-reduced);
- mezo / zo_sign evaluate their slice at the same seeded perturbations and all-reduce only
  the loss scalars (weighted by slice size), so every rank applies the same update;
- es / cem split the population instead and all-reduce the fitness values.

Only rank 0 evaluates, logs, checkpoints and saves; the others follow its stop decision.
`Dist.bytes_sent` counts the payload every collective of the training steps is handed
(the DDP gradient buckets through a communication hook), for the benchmark.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DistributedRunFailed(RuntimeError):
    """A rank of a distributed training exited with an error or was killed."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`model.device` -> a torch device: auto picks CUDA when present, else CPU.

    Raises:
        ValueError: the named device is not available on this machine.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("model.device is cuda but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("model.device is mps but this torch build has no MPS device")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"finetune.precision fp16 needs a CUDA device (training on "
                         f"{device.type}); use bf16 or fp32")


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device and precision."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # ranks on this machine (they share its cores)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    bytes_sent: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- batches --------------------------------------------------------------------
    def bounds(self, n: int) -> tuple[int, int]:
        """Rows [lo, hi) of an n-row global batch that this rank evaluates."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def shard(self, batch: Batch) -> tuple[Batch, float]:
        """(this rank's slice of `batch` on the device, its share of the global rows)."""
        n = len(batch["labels"])
        if not self.active:
            return self.to_device(batch), 1.0
        lo, hi = self.bounds(n)
        if hi <= lo:
            raise ValueError(f"a global batch of {n} rows cannot feed {self.world} ranks "
                             "(raise finetune.batch_size)")
        # Slices keep the global batch's width: every rank then looks up the same position
        # embedding rows, so row-sparse updates agree without exchanging the rows.
        part = {k: v[lo:hi] for k, v in batch.items()}
        return self.to_device(part), (hi - lo) / n

    def to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def mine(self, k: int) -> bool:
        """Whether population member `k` is evaluated here (round robin over ranks)."""
        return k % self.world == self.rank

    # --- precision ------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    # --- collectives (every one the steps use goes through here and is counted) -----
    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64); identical on every rank."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        self.bytes_sent += t.numel() * t.element_size()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def union_rows(self, rows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Union over ranks of the embedding rows each rank's slice looked up (counted as
        the int32 row ids; the objects are pickled on the wire)."""
        if not self.active:
            return rows
        import torch.distributed as dist

        local = {i: r.to(torch.int32).cpu() for i, r in rows.items()}
        gathered: list[Any] = [None] * self.world
        self.bytes_sent += sum(r.numel() * 4 for r in local.values())
        dist.all_gather_object(gathered, local)
        merged: dict[int, list[torch.Tensor]] = {}
        for part in gathered:
            for i, r in part.items():
                merged.setdefault(int(i), []).append(r)
        return {i: torch.unique(torch.cat(rs)).to(torch.long).to(self._rows_device(rows))
                for i, rs in merged.items()}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (small Python values: stop decisions, paths)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (small Python values)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    @staticmethod
    def _rows_device(rows: dict[int, torch.Tensor]) -> torch.device:
        return next(iter(rows.values())).device if rows else torch.device("cpu")

    # --- DDP --------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to run forwards through: DDP over it when there are several ranks."""
        if not self.active:
            return model
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)

        def counted_allreduce(state, bucket):  # noqa: ANN001 (DDP checks annotations)
            buf = bucket.buffer()
            self.bytes_sent += buf.numel() * buf.element_size()
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counted_allreduce)
        return ddp


def init(params: Any) -> Dist:
    """This process's Dist: from torchrun's environment when WORLD_SIZE > 1, else one rank.

    Joins the process group (gloo on CPU, NCCL on CUDA) with `finetune.dist_timeout_s`, so
    a rank whose peer died fails instead of waiting forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(params.model.device, local)
    check_precision(params.finetune.precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, rank=rank, world_size=world,
                timeout=datetime.timedelta(seconds=params.finetune.dist_timeout_s),
                device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world=world, local_world=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                device=device, precision=params.finetune.precision)


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nproc: int, args: list[str], *, log_dir: Path | None = None,
           env: dict[str, str] | None = None) -> None:
    """Run `python -m <args>` as `nproc` ranks on this machine under torchrun.

    Each rank gets one OpenMP thread unless OMP_NUM_THREADS says otherwise (the ranks
    share the cores). The ranks' output is passed through to stderr and kept in
    `log_dir/torchrun.log`. torchrun stops every rank as soon as one fails.

    Raises:
        DistributedRunFailed: a rank exited non-zero or was killed (the tail of the output
            in the message).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "--max-restarts", "0", "--monitor-interval", "0.5", "-m", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                **(env or {})}
    tail: collections.deque[str] = collections.deque(maxlen=30)
    log = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / "torchrun.log").open("w")
    try:
        with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                sys.stderr.write(line)
                if log is not None:
                    log.write(line)
            code = proc.wait()
    finally:
        if log is not None:
            log.close()
    if code != 0:
        raise DistributedRunFailed(
            f"distributed training with {nproc} ranks failed (torchrun exit {code}); "
            "nothing was saved or registered; rerun with --resume to continue from the "
            "last checkpoint. Last output:\n" + "\n".join(tail))
