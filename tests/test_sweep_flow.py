"""The sweep flow for real: a real Prefect run, a local Dask cluster of 2 worker processes,
an Optuna SQLite study and an MLflow SQLite store. Four trials on a tiny model: two finish,
one diverges (recorded as failed), one is stopped by the median pruner (recorded as
pruned); the best goes through the retrain chain and is registered through the gate."""

from __future__ import annotations

import json
import os

import pytest

from components.config import load_params
from tests.conftest import tiny_overrides, tiny_rows

# Trials run in this order (enqueued), two at a time: 0 and 1 start together, 1 diverges at
# once (lr 1e30: NaN loss) so 2 starts; 2 repeats 0 (reused if 0 has finished, else the same
# scores step by step, so never below the median); 3 starts only when 0 or 2 has finished,
# so the median pruner has a finished trial to hold it against, and at lr 1e-7 it never
# learns.
LRS = ["3.0e-3", "1.0e+30", "3.0e-3", "1.0e-7"]


@pytest.mark.integration
@pytest.mark.slow
def test_four_trials_on_two_dask_workers_and_the_winner_through_the_gate(
        tmp_path, tiny_backbone_dir, monkeypatch):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from components.sweep import load_study, open_sweep
    from pipelines.sweep import sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(50)))
    lrs = ", ".join(sorted(set(LRS)))
    overrides = tiny_overrides(tmp_path, tiny_backbone_dir) + [
        f"paths.sweep={tmp_path / 'sweep'}", "finetune.early_stopping.patience=0",
        "gate.min_metrics={accuracy: 0.34}", "gate.max_latency_p95_ms=1000",
        f"sweep.space={{finetune.adamw.lr: {{choices: [{lrs}]}}}}",
        "sweep.enqueue_current=false",
        "sweep.enqueue=[" + ", ".join(f"{{finetune.adamw.lr: {lr}}}" for lr in LRS) + "]",
        "sweep.workers=2", "sweep.pruner.method=median", "sweep.pruner.startup_trials=1",
        "sweep.pruner.warmup_steps=0",
        # The baseline (these params' own lr) is not a trial: the winner is re-run against
        # it with a second seed on the same workers before either ships.
        "finetune.adamw.lr=1.0e-7", "sweep.confirm_seeds=2"]

    result = sweep(n_trials=4, overrides=overrides)

    params = load_params(overrides=overrides + ["sweep.n_trials=4"])
    study = load_study(params, open_sweep(params))
    trials = {t.number: t for t in study.trials}
    assert [trials[n].state.name for n in range(4)] == ["COMPLETE", "FAIL", "COMPLETE",
                                                         "PRUNED"]
    assert "diverged" in trials[1].user_attrs["reason"]
    assert trials[3].user_attrs["reason"].startswith("pruned at step")
    workers = {trials[n].user_attrs["worker"] for n in range(4)}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)

    client = MlflowClient(params.registry.tracking_uri)
    parent = result["sweep"]["parent_run_id"]
    nested = client.search_runs([client.get_experiment_by_name(
        params.registry.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    by_trial = {r.data.tags["sweep_trial"]: r for r in nested}
    seed = params.finetune.seed
    # The confirmation's new models (the first seed's winner is its trial's model).
    confirm = [f"confirm-baseline-seed{seed}", f"confirm-baseline-seed{seed + 1}",
               f"confirm-winner-seed{seed + 1}"]
    assert sorted(by_trial) == ["0", "1", "2", "3", *confirm]
    assert [by_trial[n].info.status for n in "0123"] == ["FINISHED", "FAILED", "FINISHED",
                                                         "KILLED"]
    assert [by_trial[n].data.tags["sweep_state"] for n in "0123"] == [
        "complete", "fail", "complete", "pruned"]
    assert len(client.get_metric_history(by_trial["0"].info.run_id, "val/accuracy")) == 3
    sweep_run = client.get_run(parent)
    assert sweep_run.info.status == "FINISHED"
    assert "sweep/sweep.png" in [a.path for a in client.list_artifacts(parent, "sweep")]

    best = result["sweep"]["best"]
    assert best["number"] == 0 and result["sweep"]["winner_model_reused"]
    assert result["status"] == "promoted" and result["version"] == "1"
    verdict = result["sweep"]["confirmation"]
    assert verdict["seeds"] == [seed, seed + 1] and verdict["ships"] in ("winner", "baseline")
    assert verdict["scores"]["winner"][0] == best["value"]
    shipped = load_params(overrides=overrides + result["sweep"]["shipped_overrides"])
    assert shipped.finetune.adamw.lr == (3.0e-3 if verdict["ships"] == "winner" else 1.0e-7)
    assert (tmp_path / "sweep").rglob("verdict.json")
    # The winner's model is the one its trial made (trial 2 may have made the same one at
    # the same time): reused, not retrained, and its run is a trial run under the sweep's.
    assert "finetune" in result["reused"]
    assert by_trial[client.get_run(result["run_id"]).data.tags["sweep_trial"]].info.run_id \
        == result["run_id"]
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    assert champion.run_id == result["run_id"] and champion.tags["gate_passed"] == "true"
    winner = load_params(overrides=overrides + result["sweep"]["best_overrides"])
    assert winner.finetune.adamw.lr == float(LRS[best["number"]])

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs()
        states = {r.name: r.state.name for r in runs if r.name.startswith("trial-")}
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["sweep-trials"])))
    assert sorted(states.values()) == ["Completed", "Completed", "Failed", "Pruned"]
    assert len(artifacts) == 1 and len(json.loads(artifacts[0].data)) == 4
    assert set(states) == {"trial-0", "trial-1", "trial-2", "trial-3"}
