"""One retrain at a time per model, against a real Prefect server and a real runner.

Two retrain runs are started at once (as a schedule and a person in the UI could): one
holds the model's slot from its first stage to its last, the other waits, then finds the
version the first registered and trains nothing. A third run started meanwhile with
`schedule.when_busy=skip` ends at once in a Skipped state that says why.
"""

from __future__ import annotations

import threading

import pytest

from components.config import load_params
from tests.prefect_support import (
    BIN,
    SERVER_TIMEOUT_S,
    Proc,
    running,
    tiny_project_server,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_retrains_at_once_never_interleave(tmp_path, tiny_backbone_dir):
    from components.registry.versions import list_versions

    with tiny_project_server(tmp_path, tiny_backbone_dir) as project:
        params_file, env, server, api = (project.params_file, project.env, project.server,
                                         project.api)
        runner = Proc([str(BIN / "tuneline"), "deploy", "--params", str(params_file),
                       "--limit", "3"], env, tmp_path, tmp_path / "deploy.log")
        procs = [server, runner]
        with running(runner):
            wait_for(lambda: api.deployment("retrain"), SERVER_TIMEOUT_S, "the deployment",
                     procs)
            created: list[dict] = []
            failed: list[BaseException] = []

            def start() -> None:  # a thread's exception would otherwise vanish
                try:
                    created.append(api.create_run("retrain", {}))
                except BaseException as exc:  # noqa: BLE001 — reported below
                    failed.append(exc)

            starts = [threading.Thread(target=start) for _ in range(2)]
            for t in starts:
                t.start()
            for t in starts:
                t.join()
            assert not failed, f"creating the two runs failed: {failed!r}"

            def slot_holder() -> dict | None:
                for run in created:
                    tasks = api.task_runs(run["id"])
                    if any(t["name"].startswith("ingest") for t in tasks):
                        return api.flow_run(run["id"])
                return None

            holder = wait_for(slot_holder, 600, "a run to take the slot", procs, interval=1)
            skipper = api.create_run("retrain", {"overrides": ["schedule.when_busy=skip"]})
            skipped = api.wait_final(skipper["id"], 600, procs)
            finished = [api.wait_final(r["id"], 900, procs) for r in created]
        skipper_tasks = api.task_runs(skipper["id"])
        spans = sorted((api.task_runs(r["id"]) for r in finished),
                       key=lambda tasks: tasks[0]["start_time"])

    assert skipped["state"]["type"] == "COMPLETED" and skipped["state"]["name"] == "Skipped"
    assert "another retrain of tuneline-classifier is running" in skipped["state"]["message"]
    assert holder["name"] in skipped["state"]["message"]
    assert "schedule.when_busy=skip" in skipped["state"]["message"]
    assert skipper_tasks == []                                # it did not touch anything

    assert [r["state"]["type"] for r in finished] == ["COMPLETED", "COMPLETED"], runner.tail()
    first, second = spans
    assert max(t["end_time"] for t in first) <= min(t["start_time"] for t in second)
    assert {t["name"].rsplit("-", 1)[0] for t in first} >= {"finetune", "register"}
    # The second waited, then found the version the first registered: nothing trained.
    assert [t["name"].rsplit("-", 1)[0] for t in second] == [
        "ingest", "prepare", "version-data", "find-registered"]
    assert [v["version"] for v in list_versions(load_params(params_file))] == ["1"]
