"""New data through Prefect events, against a real Prefect server.

The deployments are registered on a work pool with no worker, so the runs a trigger
creates stay Scheduled and can be counted: `tuneline ingest FILE --notify` twice with the
same bytes creates one retrain run with FILE as its data path; other bytes create another;
the `watch-data` flow announces paths.raw the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import tiny_rows
from tests.prefect_support import BIN, base_env, tiny_project_server, wait_for, write_tiny_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_announced_data_starts_one_retrain_per_hash(tmp_path, tiny_backbone_dir):
    with tiny_project_server(tmp_path, tiny_backbone_dir) as project:
        params_file, env, server, api = (project.params_file, project.env, project.server,
                                         project.api)

        def cli(*args: str) -> str:
            proc = subprocess.run([str(BIN / "tuneline"), *args, "--params", str(params_file)],
                                  env=env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, proc.stdout + proc.stderr + server.tail()
            return proc.stdout

        def runs_on(path) -> list[dict]:
            return [r for r in api.flow_runs("retrain")
                    if r["parameters"].get("data_path") == str(path)
                    and r["auto_scheduled"] is False]

        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "idle", "--type",
                        "process"], env=env, check=True, capture_output=True, timeout=120)
        cli("deploy", "--pool", "idle")
        dep = api.deployment("retrain")
        assert dep["enforce_parameter_schema"] is True
        bad = api.http.post(f"/deployments/{dep['id']}/create_flow_run",
                            json={"parameters": {"strategy": "sgd", "max_steps": 0}})
        assert bad.status_code == 409 and "sgd" in bad.text, bad.text  # checked server-side
        automations = api.http.post("/automations/filter", json={}).json()
        (trigger,) = [a["trigger"] for a in automations]
        assert trigger["expect"] == ["tuneline.data.changed"]
        assert trigger["within"] == 3600  # schedule.dedupe_s

        first = tmp_path / "drop" / "tickets.jsonl"
        first.parent.mkdir()
        first.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(20, seed=3)))
        out = cli("ingest", str(first), "--notify")
        assert "announced" in out and "tuneline.data.changed" in out
        (run,) = wait_for(lambda: runs_on(first), 120, "a retrain run on the file", [server])
        assert run["parameters"]["strategy"] == "adamw"      # the rest: deployment defaults
        assert run["parameters"]["params_file"] == str(params_file)

        cli("ingest", "--input", str(first), "--notify")     # the same bytes again
        wait_for(lambda: len(api.events("tuneline.data.changed")) == 2, 60,
                 "the second announcement", [server])
        second = tmp_path / "drop" / "more.jsonl"
        second.write_text(first.read_text() + json.dumps(
            {"text": "late goal wins the league", "label": "sports"}) + "\n")
        cli("ingest", str(second), "--notify")
        wait_for(lambda: runs_on(second), 120, "a retrain run on the new bytes", [server])
        time.sleep(3)  # events are evaluated in order: the repeat was seen before `second`
        assert len(runs_on(first)) == 1

        # The watcher announces paths.raw the same way (no champion yet: new to it).
        subprocess.run([sys.executable, "-c", "from pipelines.sensor import watch_data; "
                        f"watch_data(params_file={str(params_file)!r})"],
                       env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)
        raw = (tmp_path / "raw.jsonl").resolve()
        wait_for(lambda: runs_on(raw), 120, "a retrain run on paths.raw", [server])
        # Triggers act on the event stream; the event store is written in batches after.
        wait_for(lambda: {e["payload"]["source"] for e in api.events("tuneline.data.changed")}
                 == {"tuneline ingest", "watch-data"}, 60, "the stored events", [server])


def test_ingest_notify_needs_a_server(tmp_path, tiny_backbone_dir):
    params_file = write_tiny_project(tmp_path, tiny_backbone_dir)
    proc = subprocess.run([str(BIN / "tuneline"), "ingest", str(tmp_path / "raw.jsonl"),
                           "--notify", "--params", str(params_file)],
                          env=base_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "PREFECT_API_URL" in proc.stderr and not (tmp_path / "input").exists()
