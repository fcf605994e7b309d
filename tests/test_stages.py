"""The stage table: fingerprints follow exactly the params and code a stage declares; a
stage refuses inputs made from other params; training progress reaches plain logs."""

from __future__ import annotations

import logging

import pytest

from components.config import load_params
from components.stages import StaleInputError, fingerprint
from components.stages.spec import ORDER, SPECS
from tests.conftest import tiny_overrides

# One value each stage reads (and only it and the stages after it).
READS = {"prepare": "data.min_chars=4", "finetune": "finetune.max_steps=7",
         "evaluate": "evaluate.ece_bins=9", "export": "export.latency_repeats=9",
         "gate": "gate.max_size_mb=9"}
DOWNSTREAM = {"prepare": {"prepare", "pretrain", "finetune", "evaluate", "export", "gate",
                          "register"},
              "finetune": {"finetune", "evaluate", "export", "gate", "register"},
              "evaluate": {"evaluate", "gate", "register"},
              "export": {"export", "gate", "register"},
              "gate": {"gate", "register"}}


def _fingerprints(overrides: list[str]) -> dict[str, str]:
    params = load_params(overrides=overrides + ["pretrain.enabled=true"])
    return {name: fingerprint(name, params) for name in ORDER if name != "ingest"}


@pytest.mark.parametrize("stage", sorted(READS))
def test_a_value_a_stage_reads_changes_it_and_what_follows(stage, tmp_path,
                                                          tiny_backbone_dir):
    base = tiny_overrides(tmp_path, tiny_backbone_dir)
    before, after = _fingerprints(base), _fingerprints(base + [READS[stage]])
    changed = {name for name in before if before[name] != after[name]}
    # prepare's output is identified by content: before it is rewritten, only it changes.
    expected = {"prepare"} if stage == "prepare" else DOWNSTREAM[stage]
    assert changed == expected


def test_values_no_stage_reads_change_nothing(tmp_path, tiny_backbone_dir):
    base = tiny_overrides(tmp_path, tiny_backbone_dir)
    before = _fingerprints(base)
    for unread in ("serve.port=9999", "schedule.cron=0 4 * * *", "demo.seed=8",
                   f"paths.model={tmp_path / 'elsewhere'}", "registry.experiment=other"):
        assert _fingerprints(base + [unread]) == before, unread


def test_a_switched_off_pretrain_ignores_its_settings(tmp_path, tiny_backbone_dir):
    base = tiny_overrides(tmp_path, tiny_backbone_dir) + ["pretrain.enabled=false"]
    a, b = (load_params(overrides=base + extra) for extra in ([], ["pretrain.lr=1.0"]))
    assert fingerprint("finetune", a) == fingerprint("finetune", b)
    assert SPECS["pretrain"].active_deps(a) == ()


def test_a_stage_refuses_inputs_made_from_other_params(tiny_params):
    from components import stages

    with pytest.raises(StaleInputError, match=r"finetune: .*prepared is missing; run "
                                              r"`tuneline prepare` first"):
        stages.finetune(tiny_params)


def test_training_prints_one_line_per_evaluation(tiny_params, tiny_prepared, tmp_path, caplog):
    from components.train.finetune import train

    caplog.set_level(logging.INFO, logger="tuneline.train")
    train(tiny_params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    lines = [r.getMessage() for r in caplog.records if r.name == "tuneline.train"]
    assert len(lines) == 3                              # 30 steps, an evaluation every 10
    assert lines[0].startswith("step 10/30  train loss ")
    assert "validation accuracy" in lines[0] and "elapsed" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("step 30/30") and lines[-1].endswith("ETA 0m00s")


def test_system_metrics_switched_on_reach_the_training_run(tmp_path, tiny_backbone_dir):
    """registry.system_metrics: the model's MLflow run gets MLflow's system/* metrics
    (sampled here every 0.2 s so the tiny training lasts several samples)."""
    import json

    from components import stages
    from components.registry.tracking import get_client
    from tests.conftest import tiny_rows

    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    params = load_params(overrides=tiny_overrides(tmp_path, tiny_backbone_dir) + [
        "model.num_threads=1", "registry.system_metrics=true",
        "registry.system_metrics_interval_s=0.2"])
    for stage in ("ingest", "prepare", "version_data", "pretrain"):
        getattr(stages, stage)(params)
    run_id = stages.finetune(params).result["mlflow_run_id"]
    metrics = get_client(params).get_run(run_id).data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"
            } <= system, sorted(metrics)
    assert "finetune/steps" in metrics  # the training's own numbers are still there
