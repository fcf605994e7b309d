"""Device and precision, and training as 2 ranks (gloo on 127.0.0.1, 1 thread a rank).

- DDP on 2 ranks ends where 1 process with the same global batch ends (fp tolerance);
- distributed zeroth-order keeps the weights bit-identical on every rank, and equals one
  process up to the order of the loss reduction (es: exactly);
- a killed rank fails the stage cleanly (no model, nothing registered), `--resume` then
  finishes exactly where an uninterrupted 2-rank run does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.config import PROJECT_ROOT, Params, load_params
from components.stages.finetune import train_distributed
from components.train.finetune import checkpoint as ckpt
from components.train.finetune import train
from components.train.finetune.distributed import Dist, check_precision, resolve_device
from tests.conftest import tiny_overrides, tiny_rows, write_prepared
from tests.k8s_support import config_data, one, render
from tests.test_modeling import _with

GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def still_backbone(tmp_path_factory, tiny_backbone_dir) -> Path:
    """The tiny BERT without dropout: 1 and 2 ranks then see the same function."""
    import shutil

    out = tmp_path_factory.mktemp("tiny-bert-nodrop") / "bb"
    shutil.copytree(tiny_backbone_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _params(root: Path, backbone: Path, strategy: str, nproc: int, *extra: str) -> Params:
    return load_params(overrides=tiny_overrides(root, backbone) + [
        f"finetune.strategy={strategy}", f"finetune.nproc={nproc}",
        f"finetune.batch_size={GLOBAL_BATCH // nproc}", "model.num_threads=1",
        "finetune.max_steps=6", "finetune.eval_every=6", "finetune.checkpoint_every=3",
        "finetune.mezo.lr=1e-2", "finetune.es.lr=1e-2", *extra])


def _run(root: Path, backbone: Path, strategy: str, nproc: int) -> tuple[dict, dict]:
    """(metrics, saved weights) of a short run with `nproc` ranks, global batch 8."""
    params = _params(root / f"{strategy}-{nproc}", backbone, strategy, nproc)
    write_prepared(Path(params.paths.prepared), tiny_rows())
    if nproc > 1:
        metrics = train_distributed(params, Path(params.paths.model), None,
                                    Path(params.paths.checkpoints), False, None)
    else:
        metrics = train(params, params.paths.prepared, params.paths.model,
                        checkpoint_dir=params.paths.checkpoints)
    return metrics, load_file(str(Path(params.paths.model) / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_device_auto_is_cpu_here_and_fp16_needs_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        check_precision("fp16", torch.device("cpu"))


def test_ranks_split_a_batch_into_contiguous_slices():
    for world, n in [(2, 8), (2, 7), (3, 8)]:
        cuts = [Dist(rank=r, world=world).bounds(n) for r in range(world)]
        assert cuts[0][0] == 0 and cuts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
        assert max(h - lo for lo, h in cuts) - min(h - lo for lo, h in cuts) <= 1


@pytest.mark.parametrize("strategy", ["adamw", "mezo"])
def test_bf16_autocast_trains_on_cpu(tiny_params, tiny_prepared, tmp_path, strategy):
    params = _with(tiny_params, **{"finetune.precision": "bf16", "finetune.strategy": strategy,
                                   "finetune.max_steps": 4, "finetune.eval_every": 4,
                                   "finetune.checkpoint_every": 2})
    metrics = train(params, tiny_prepared, tmp_path / "m", checkpoint_dir=tmp_path / "ck")
    assert metrics["steps"] == 4 and torch.isfinite(torch.tensor(metrics["val_loss"]))
    # Weights stay fp32 on CPU in the model and the checkpoints: they load anywhere.
    for path in (tmp_path / "m" / "model.safetensors",
                 ckpt.latest_checkpoint(tmp_path / "ck") / "weights.safetensors"):
        tensors = load_file(str(path))
        assert all(t.dtype == torch.float32 and t.device.type == "cpu"
                   for t in tensors.values() if t.is_floating_point())


@pytest.mark.slow
def test_ddp_on_two_ranks_matches_one_process_with_the_global_batch(tmp_path, still_backbone):
    one, w1 = _run(tmp_path, still_backbone, "adamw", 1)
    two, w2 = _run(tmp_path, still_backbone, "adamw", 2)
    assert two["ranks"] == 2 and two["ranks_agree"]
    assert _max_diff(w1, w2) < 1e-5
    assert two["train_loss_final"] == pytest.approx(one["train_loss_final"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["mezo", "es"])
def test_zeroth_order_ranks_stay_identical_and_match_one_process(tmp_path, still_backbone,
                                                                  strategy):
    one, w1 = _run(tmp_path, still_backbone, strategy, 1)
    two, w2 = _run(tmp_path, still_backbone, strategy, 2)
    # Bit-identical weights on both ranks after every update (sha256 of each rank's).
    assert two["ranks_agree"] and len(set(two["rank_weight_digests"])) == 1
    # The embedding matrix trains too (row-sparse): the ranks' row sets are merged.
    if strategy == "es":  # ranks split the population: every loss is computed as alone
        assert _max_diff(w1, w2) == 0.0
    else:  # mezo: the loss of the global batch is summed in another order
        assert _max_diff(w1, w2) < 5e-5
    assert two["train_loss_final"] != two["train_loss_initial"]  # the updates did happen


def _worker_of_rank(pid: int, rank: int) -> int | None:
    """Pid of the training worker with RANK=`rank` among the descendants of `pid` (Linux)."""
    parent = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                # Fields after the command name (which may hold spaces) start at ")".
                parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1]
                                             .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for child, ppid in parent.items():
        up = ppid
        while up not in (pid, 0, 1) and up in parent:
            up = parent[up]
        if up != pid:
            continue
        try:
            cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ")
            env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"components.stages.ranks" in cmd and f"RANK={rank}".encode() in env:
            return child
    return None


def _prepared_project(tmp_path: Path, params):
    """params.yaml written for a CLI or worker, raw data ingested and prepared; its path."""
    from components import stages

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    Path(params.paths.raw).parent.mkdir(parents=True, exist_ok=True)
    Path(params.paths.raw).write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    stages.ingest(params)
    stages.prepare(params)
    return params_file


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_rank_fails_the_stage_and_a_rerun_resumes(tmp_path, still_backbone):
    from mlflow import MlflowClient

    params = _params(tmp_path / "run", still_backbone, "adamw", 2,
                     "finetune.max_steps=150", "finetune.eval_every=150",
                     "finetune.checkpoint_every=10")
    params_file = _prepared_project(tmp_path, params)
    cmd = [sys.executable, "-c", "from pipelines.cli import main; main()", "finetune",
           "--params", str(params_file)]
    ck, out = Path(params.paths.checkpoints), Path(params.paths.model)

    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ckpt.list_checkpoints(ck):
            assert proc.poll() is None, f"ended before a checkpoint:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        victim = _worker_of_rank(proc.pid, 1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # no hang: the stage ends by itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "distributed training with 2 ranks failed" in err and "--resume" in err
    assert not (out / "model.safetensors").exists()
    client = MlflowClient(params.registry.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tuneline").experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_registered_models() == []
    killed_at = int(ckpt.latest_checkpoint(ck).name.split("-")[1])

    done = subprocess.run([*cmd, "--resume"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((Path(params.paths.metrics) / "finetune.json").read_text())
    assert resumed["resumed_from"] == killed_at and resumed["ranks_agree"]

    # The same training uninterrupted (other folders) ends with the same weights.
    ref = _with(params, **{"paths.model": tmp_path / "ref", "paths.checkpoints":
                           tmp_path / "ck-ref"})
    reference = train_distributed(ref, tmp_path / "ref", None, tmp_path / "ck-ref", False,
                                  None)
    assert reference["val_loss"] == resumed["val_loss"]
    assert _max_diff(load_file(str(tmp_path / "ref" / "model.safetensors")),
                     load_file(str(out / "model.safetensors"))) == 0.0


@pytest.mark.slow
@pytest.mark.integration
def test_stage_mode_under_an_outside_torchrun(tmp_path, still_backbone):
    """What the Kubernetes Job runs: torchrun started from outside, rank 0 runs the stage."""
    from mlflow import MlflowClient

    from components.stages.base import stored_result
    from components.stages.spec import fingerprint
    from components.train.finetune.distributed import launch

    params = _params(tmp_path / "run", still_backbone, "mezo", 2)
    params_file = _prepared_project(tmp_path, params)
    with pytest.raises(RuntimeError, match="failed"):  # nproc must equal the ranks started
        launch(2, ["components.stages.ranks", "--params", str(params_file),
                   "--set", "finetune.nproc=3"])
    launch(2, ["components.stages.ranks", "--params", str(params_file), "--resume"])
    record = stored_result(Path(params.paths.model), fingerprint("finetune", params))
    assert record is not None and record["ranks_agree"] and record["ranks"] == 2
    client = MlflowClient(params.registry.tracking_uri)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6


@pytest.mark.slow
@pytest.mark.integration
def test_every_rank_starts_from_the_backbone_the_pretrain_guard_kept(tmp_path, still_backbone):
    """Pretraining on, its guard discarded the adaptation: the folder holds only a marker,
    and rank 1 must start from the original backbone as rank 0 does."""
    from components import stages
    from components.stages.base import stored_result
    from components.stages.chain import starting_backbone
    from components.stages.spec import fingerprint
    from components.train.finetune.distributed import launch
    from tests.test_pretrain_stage import DAMAGE

    params = _params(tmp_path / "run", still_backbone, "adamw", 2,
                     *(f"{k}={v}" for k, v in DAMAGE.items()))
    params_file = _prepared_project(tmp_path, params)
    assert stages.pretrain(params)["backbone"] == "original"
    assert starting_backbone(params) is None  # a marker, no weights in the folder
    launch(2, ["components.stages.ranks", "--params", str(params_file)])
    record = stored_result(Path(params.paths.model), fingerprint("finetune", params))
    assert record is not None and record["ranks"] == 2 and record["ranks_agree"]


def test_training_job_manifest_parses_and_runs_the_worker():
    docs = render("prod")
    job, svc = one(docs, "Job", "tuneline-train"), one(docs, "Service", "tuneline-train")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(
        config_data(docs, "tuneline-train")["NNODES"])
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    command = " ".join(pod["containers"][0]["args"])
    for part in ("torch.distributed.run", "--node-rank \"$JOB_COMPLETION_INDEX\"",
                 "-m components.stages.ranks", "--resume", "finetune.nproc="):
        assert part in command


def test_the_flow_resumes_a_failed_distributed_finetune_once(monkeypatch):
    from components import stages
    from components.train.finetune.distributed import DistributedRunFailed
    from pipelines.stage_tasks import finetune_resuming

    calls = []

    def fake(params, **kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise DistributedRunFailed("distributed training with 2 ranks failed")
        return "done"

    monkeypatch.setattr(stages, "finetune", fake)
    with pytest.raises(DistributedRunFailed):  # once, not forever
        finetune_resuming(None)
    assert calls == [{}, {"resume": True}]
    assert finetune_resuming(None) == "done" and calls[-1] == {}


@pytest.mark.slow
def test_distributed_mezo_resumes_exactly(tmp_path, still_backbone):
    params = _params(tmp_path / "resume", still_backbone, "mezo", 2)
    write_prepared(Path(params.paths.prepared), tiny_rows())
    ck = Path(params.paths.checkpoints)
    first = train_distributed(params, Path(params.paths.model), None, ck, False, None)
    weights = load_file(str(Path(params.paths.model) / "model.safetensors"))
    assert ckpt.latest_checkpoint(ck).name == "step-0000003"  # left by the run above
    again = train_distributed(params, Path(params.paths.model), None, ck, True, None)
    assert again["resumed_from"] == 3 and again["ranks_agree"]
    assert again["rank_weight_digests"] == first["rank_weight_digests"]
    assert _max_diff(weights, load_file(str(Path(params.paths.model) / "model.safetensors"))) == 0
