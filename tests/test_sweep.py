"""Sweeps without the drivers: the search space in params, trials run in this process
against a real Optuna SQLite study and a real MLflow store; a repeated trial is reused, an
interrupted study resumes."""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError, load_params, named_overrides
from tests.conftest import tiny_overrides, tiny_rows


def test_space_keys_and_values_are_checked_when_params_load():
    with pytest.raises(ConfigError, match=r"sweep\.space\.finetune\.adamw\.lrr: no such param"):
        load_params(overrides=["sweep.space.finetune.adamw.lrr={low: 1, high: 2}"])
    with pytest.raises(ConfigError, match=r"sweep\.space\.peft\.method: not a number"):
        load_params(overrides=["sweep.space.peft.method={low: 1, high: 2}"])
    with pytest.raises(ConfigError, match=r"finetune\.max_steps: an integer"):
        load_params(overrides=["sweep.space.finetune.max_steps={low: 1.5, high: 9}"])
    with pytest.raises(ConfigError, match=r"paths\.\* cannot be searched"):
        load_params(overrides=["sweep.space.paths.model={choices: [a, b]}"])
    with pytest.raises(ConfigError, match=r"enqueue\[0\]: finetune\.seed not in sweep\.space"):
        load_params(overrides=["sweep.enqueue=[{finetune.seed: 1}]"])


def test_one_bound_of_a_range_can_be_set_and_an_entry_removed():
    p = load_params(overrides=["sweep.space.finetune.adamw.lr.high=1e-3",
                               "sweep.space.model.max_length=null"])
    lr = p.sweep.space["finetune.adamw.lr"]
    assert (lr.low, lr.high, lr.log) == (3e-5, 1e-3, True)
    assert "model.max_length" not in p.sweep.space
    assert named_overrides(n_trials=3, dask_address="tcp://h:8786") == [
        "sweep.n_trials=3", "sweep.dask_address=tcp://h:8786"]


def test_choices_and_searched_keys_are_checked_before_a_sweep_starts():
    from components.sweep import check_space

    with pytest.raises(ConfigError, match=r"peft\.method: choice 'lorax' is invalid"):
        check_space(load_params(overrides=["sweep.space={peft.method: {choices: [lora, lorax]}}"]))
    with pytest.raises(ConfigError, match=r"evaluate\.ece_bins: not a setting a trial can vary"):
        check_space(load_params(overrides=["sweep.space={evaluate.ece_bins: {low: 5, high: 9}}"]))


def test_values_become_overrides_that_give_them_back_exactly():
    from components.sweep import as_overrides

    values = {"finetune.adamw.lr": 1.2345678901234567e-05, "finetune.max_steps": 300,
              "peft.method": "lora", "finetune.freeze_embeddings": False}
    again = load_params(overrides=as_overrides(values))
    assert again.finetune.adamw.lr == values["finetune.adamw.lr"]
    assert (again.finetune.max_steps, again.peft.method) == (300, "lora")
    assert again.finetune.freeze_embeddings is False


def _one_choice_sweep(tmp_path, backbone, n_trials: int):
    """A prepared tiny project whose sweep space has one choice: every trial asks for the
    same values. Returns the params as workers see them."""
    from components import stages
    from components.sweep import for_workers

    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(20)))
    sets = tiny_overrides(tmp_path, backbone) + [
        f"paths.sweep={tmp_path / 'sweep'}", "finetune.max_steps=6", "finetune.eval_every=3",
        "sweep.space={finetune.adamw.lr: {choices: [3.0e-3]}}",
        f"sweep.n_trials={n_trials}", "sweep.pruner.method=none"]
    params = for_workers(load_params(overrides=sets))
    stages.ingest(params)
    stages.prepare(params)
    return params


@pytest.mark.slow
def test_trials_reuse_a_repeated_record_and_an_interrupted_study_resumes(
        tmp_path, tiny_backbone_dir, monkeypatch):
    from mlflow import MlflowClient

    from components import stages
    from components.sweep import TrialQueue, load_study, open_sweep, run_trial

    monkeypatch.chdir(tmp_path)
    params = _one_choice_sweep(tmp_path, tiny_backbone_dir, n_trials=3)

    plan = open_sweep(params)
    assert (plan.finished, plan.to_run) == (0, 3)
    queue = TrialQueue(params, plan)
    first, second = (run_trial(params, plan, *queue.next()) for _ in range(2))

    assert first["state"] == second["state"] == "COMPLETE"
    assert not first["reused"] and second["reused"]          # same values, same data: no training
    assert second["value"] == first["value"] and second["fingerprint"] == first["fingerprint"]
    assert second["cpu_seconds"] < first["cpu_seconds"]
    client = MlflowClient(params.registry.tracking_uri)
    runs = {r.data.tags["sweep_trial"]: r for r in client.search_runs(
        [client.get_experiment_by_name(params.registry.experiment).experiment_id],
        filter_string=f"tags.sweep_study = '{plan.study}'") if "sweep_trial" in r.data.tags}
    assert set(runs) == {"0", "1"}
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == plan.parent_run_id
        assert run.info.status == "FINISHED"
    assert runs["1"].data.tags["reused_from_run"] == runs["0"].info.run_id
    assert len(client.get_metric_history(runs["0"].info.run_id, "train/loss")) == 6

    # A run killed mid-trial leaves it "running" in the study.
    load_study(params, plan).ask()
    again = open_sweep(params)
    assert again.study == plan.study and again.parent_run_id == plan.parent_run_id
    assert (again.finished, again.to_run, again.requeued) == (2, 1, (2,))
    third = run_trial(params, again, *TrialQueue(params, again).next())
    assert third["number"] == 3 and third["state"] == "COMPLETE" and third["reused"]
    states = {t.number: (t.state.name, t.user_attrs.get("state"))
              for t in load_study(params, again).trials}
    assert states[2] == ("FAIL", "interrupted")

    # Other data is another study: scores on it are not comparable.
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(21)))
    stages.ingest(params)
    stages.prepare(params)
    assert open_sweep(params).study != plan.study


@pytest.mark.slow
def test_a_trial_that_crashes_mid_training_is_recorded_as_failed_and_the_next_one_runs(
        tmp_path, tiny_backbone_dir, monkeypatch):
    from mlflow import MlflowClient

    from components.sweep import TrialQueue, load_study, open_sweep, run_trial
    from components.sweep import trial as trial_module

    monkeypatch.chdir(tmp_path)
    params = _one_choice_sweep(tmp_path, tiny_backbone_dir, n_trials=2)
    plan = open_sweep(params)
    queue = TrialQueue(params, plan)

    class CrashAtFirstEvaluation(trial_module.StudyReporter):
        def __call__(self, metrics, step):
            if self.key in metrics:
                raise RuntimeError(f"worker lost at step {step}")

    with monkeypatch.context() as patch:
        patch.setattr(trial_module, "StudyReporter", CrashAtFirstEvaluation)
        crashed = run_trial(params, plan, *queue.next())
    after = run_trial(params, plan, *queue.next())

    assert crashed["state"] == "FAIL" and crashed["value"] is None
    assert crashed["reason"] == "RuntimeError: worker lost at step 3"
    # Same values, but the crashed trial left no model to reuse: the next one trains.
    assert after["state"] == "COMPLETE" and not after["reused"]
    states = {t.number: (t.state.name, t.user_attrs.get("reason"))
              for t in load_study(params, plan).trials}
    assert states[crashed["number"]] == ("FAIL", crashed["reason"])
    assert states[after["number"]][0] == "COMPLETE"

    client = MlflowClient(params.registry.tracking_uri)
    run = client.get_run(crashed["run_id"])              # the run training opened, not a new one
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == plan.parent_run_id
    assert run.data.tags["sweep_state"] == "fail"
    assert run.data.tags["sweep_reason"] == crashed["reason"]
    assert "train/loss" in run.data.metrics
    assert not (plan.folder / "trials" / f"{crashed['number']:04d}" / "checkpoints").exists()


def test_the_default_search_is_multi_fidelity_and_starts_from_a_portfolio():
    import optuna

    from components.sweep.study import make_pruner

    params = load_params()
    assert isinstance(make_pruner(params), optuna.pruners.HyperbandPruner)
    assert params.sweep.budget.cpu_seconds > 0 and len(params.sweep.portfolio) >= 3


@pytest.mark.slow
def test_successive_halving_stops_a_trial_that_trails_at_its_first_rung(
        tmp_path, tiny_backbone_dir, monkeypatch):
    """Four trials on the tiny model; a reporter stands in for their validation scores so
    the ranking is known: the last one trails at step 3 and stops there."""
    from components import stages
    from components.sweep import TrialQueue, for_workers, load_study, open_sweep, run_trial
    from components.sweep import trial as trial_module

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(20)))
    lrs = [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3]
    score = dict(zip(lrs, [0.9, 0.8, 0.85, 0.1], strict=True))
    sets = tiny_overrides(tmp_path, tiny_backbone_dir) + [
        f"paths.sweep={tmp_path / 'sweep'}", "finetune.max_steps=6", "finetune.eval_every=3",
        "sweep.space={finetune.adamw.lr: {choices: [" + ", ".join(map(str, lrs)) + "]}}",
        "sweep.enqueue_current=false",
        "sweep.enqueue=[" + ", ".join(f"{{finetune.adamw.lr: {lr}}}" for lr in lrs) + "]",
        "sweep.n_trials=4", "sweep.pruner.method=successive_halving",
        "sweep.pruner.warmup_steps=3", "sweep.pruner.reduction_factor=3"]
    params = for_workers(load_params(overrides=sets))
    stages.ingest(params)
    stages.prepare(params)

    class KnownScores(trial_module.StudyReporter):
        def __call__(self, metrics, step):
            if self.key in metrics:
                metrics = {**metrics, self.key: score[self.trial.params["finetune.adamw.lr"]]}
            super().__call__(metrics, step)

    monkeypatch.setattr(trial_module, "StudyReporter", KnownScores)
    plan = open_sweep(params)
    queue = TrialQueue(params, plan)
    records = [run_trial(params, plan, *queue.next()) for _ in lrs]
    assert records[0]["state"] == "COMPLETE"
    assert records[-1]["state"] == "PRUNED" and "pruned at step 3" in records[-1]["reason"]
    trials = {t.number: t for t in load_study(params, plan).trials}
    assert trials[records[0]["number"]].intermediate_values == {3: 0.9, 6: 0.9}
    assert trials[records[-1]["number"]].intermediate_values == {3: 0.1}


@pytest.mark.slow
def test_the_winner_is_retrained_with_more_seeds_and_paired_with_the_baseline(
        tmp_path, tiny_backbone_dir, monkeypatch):
    """The baseline (lr 1e-7) cannot learn in 6 steps; the winner (lr 3e-3) can. Both are
    re-trained with a second seed, the first seed's winner reused from its trial."""
    import numpy as np

    from components.sweep import (
        TrialQueue,
        confirm_plan,
        for_workers,
        judge,
        open_sweep,
        run_confirmation,
        run_trial,
    )

    monkeypatch.chdir(tmp_path)
    _one_choice_sweep(tmp_path, tiny_backbone_dir, n_trials=1)  # the prepared data
    params = for_workers(load_params(overrides=[
        *tiny_overrides(tmp_path, tiny_backbone_dir), f"paths.sweep={tmp_path / 'sweep'}",
        "finetune.max_steps=6", "finetune.eval_every=3", "finetune.adamw.lr=1.0e-7",
        "sweep.space={finetune.adamw.lr: {choices: [3.0e-3, 1.0e-7]}}",
        "sweep.enqueue_current=false", "sweep.enqueue=[{finetune.adamw.lr: 3.0e-3}]",
        "sweep.n_trials=1", "sweep.pruner.method=none", "sweep.confirm_seeds=2",
        "model.num_threads=1"]))
    plan = open_sweep(params)
    record = run_trial(params, plan, *TrialQueue(params, plan).next())
    best = {**record, "params": {"finetune.adamw.lr": 3.0e-3}}

    runs = confirm_plan(params, best)
    seed = params.finetune.seed
    assert [(r["who"], r["seed"]) for r in runs] == [
        ("winner", seed), ("baseline", seed), ("winner", seed + 1), ("baseline", seed + 1)]
    records = [run_confirmation(params, plan, **r) for r in runs]
    assert records[0]["reused"] and records[0]["model"].endswith(record["fingerprint"])
    assert not any(r["reused"] for r in records[1:])
    assert len({r["model"] for r in records}) == 4       # a model per values and seed
    n_val = len(records[0]["gold"])
    assert n_val > 0 and all(len(r["pred"]) == n_val for r in records)

    verdict = judge(params, plan, records)
    assert verdict["seeds"] == [seed, seed + 1]
    assert verdict["scores"]["winner"][0] == record["value"]
    cmp = verdict["accuracy_vs_baseline"]
    assert cmp["n"] == 2 * n_val and cmp["ci"][0] <= cmp["delta"] <= cmp["ci"][1]
    assert verdict["ships"] == ("winner" if np.mean(verdict["scores"]["winner"])
                                > np.mean(verdict["scores"]["baseline"]) else "baseline")
    assert (tmp_path / "sweep").rglob("verdict.json")
    assert "over 2 seeds" in verdict["text"] and "paired interval" in verdict["text"]

    # The winner is not re-run against itself, and confirmation can be turned off.
    assert confirm_plan(params, {**best, "params": {"finetune.adamw.lr": 1.0e-7}}) == []
    off = params.model_copy(update={"sweep": params.sweep.model_copy(
        update={"confirm_seeds": 1})})
    assert confirm_plan(off, best) == []


def test_a_winner_that_loses_the_rerun_gives_way_to_the_baseline(tmp_path):
    from components.sweep import judge
    from components.sweep.study import SweepPlan

    params = load_params()
    plan = SweepPlan(study="s", storage="sqlite://", folder=tmp_path, parent_run_id="r",
                     to_run=0, finished=0)
    gold = [0, 1, 0, 1, 0, 1, 0, 1]

    def run(who, seed, wrong):  # the last `wrong` rows predicted wrong
        pred = gold[:len(gold) - wrong] + [1 - g for g in gold[len(gold) - wrong:]]
        return {"who": who, "seed": seed, "values": {}, "cpu_seconds": 1.0,
                "score": 1 - wrong / len(gold), "gold": gold, "pred": pred}

    runs = [run("winner", 0, 2), run("baseline", 0, 2), run("winner", 1, 4),
            run("baseline", 1, 0)]
    verdict = judge(params, plan, runs)
    assert verdict["mean"] == {"winner": 0.625, "baseline": 0.875}
    assert verdict["accuracy_vs_baseline"]["delta"] == -0.25
    assert verdict["ships"] == "baseline" and not verdict["winner_better"]
    assert "the baseline ships" in verdict["text"]
    assert (tmp_path / "confirm" / "verdict.json").exists()
