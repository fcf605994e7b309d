"""The retrain slot against a real Prefect server that dies mid-run and is restarted.

A run that holds the model's slot when the server goes down must not wedge the model: once
nobody renews the slot for `schedule.slot_ttl_s`, a later retrain takes it over, and the
old holder stops with RetrainSlotLost at its next check rather than register anything. A
restart shorter than the TTL costs the holder nothing, and a slot freed at the end is free.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time

import httpx
import pytest

from components.config import PROJECT_ROOT, load_params
from pipelines.limits import RetrainBusy, one_retrain_per_model
from tests.prefect_support import (
    BIN,
    SERVER_TIMEOUT_S,
    Proc,
    running,
    start_prefect_server,
    tiny_project_server,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A freshly restarted SQLite-backed server can answer 503 for a few seconds under load: the
# TTL leaves a run that much slack before it counts its slot as lost.
TTL, RENEW = 8.0, 0.5
SLOT = "/variables/name/retrain-slot-tuneline-classifier"


def _slot_params(ttl: float = TTL) -> list[str]:
    return [f"schedule.slot_ttl_s={ttl}", f"schedule.slot_renew_s={RENEW}"]


def _python(code: str, project, name: str) -> Proc:
    # the project folder on the path: the holder imports tests.prefect_support
    env = {**project.env, "PYTHONPATH": os.pathsep.join(
        p for p in (str(PROJECT_ROOT), project.env.get("PYTHONPATH", "")) if p)}
    return Proc([sys.executable, "-c", code], env, project.params_file.parent,
                project.params_file.parent / f"{name}.log")


def _holder(project, cue) -> Proc:
    return _python("from tests.prefect_support import hold_slot; "
                   f"hold_slot({str(project.params_file)!r}, {str(cue)!r})", project, "holder")


def _retrain(project, name: str = "retrain") -> Proc:
    return _python("from pipelines.retrain import retrain; "
                   f"retrain(params_file={str(project.params_file)!r})", project, name)


def _says(proc: Proc, text: str) -> bool:
    return text in proc.log.read_text(errors="replace")


def test_server_restart_while_the_slot_is_held_does_not_wedge_the_model(
        tmp_path, tiny_backbone_dir):
    from components.registry.versions import list_versions

    cue = tmp_path / "check-now"
    with tiny_project_server(tmp_path, tiny_backbone_dir, _slot_params()) as project:
        holder = _holder(project, cue)
        with running(holder):
            wait_for(lambda: _says(holder, "HOLDING"), SERVER_TIMEOUT_S, "the holder to take "
                     "the slot", [project.server, holder], interval=0.2)
            project.server.kill()  # the server dies while the slot is held
            time.sleep(TTL + RENEW)  # down for longer than the TTL: nothing renews the slot
            server = start_prefect_server(tmp_path, project.env, "server-restarted.log")
            with running(server):
                later = _retrain(project)
                with running(later):
                    wait_for(lambda: later.popen.poll() is not None, 900, "the later retrain",
                             [server, holder], interval=2)
                assert later.popen.returncode == 0, later.tail() + holder.tail()
                assert holder.popen.poll() is None  # the old holder has not checked yet
                cue.touch()  # its next stage
                holder.popen.wait(timeout=120)
    took = re.search(r"took the 'retrain-slot-tuneline-classifier' slot after ([\d.]+) s",
                     later.log.read_text())
    assert took, later.tail()
    # It watched the dead holder's slot stay unrenewed for the TTL, then took it over.
    assert TTL <= float(took.group(1)) <= TTL + 10 * RENEW
    assert [v["version"] for v in list_versions(load_params(project.params_file))] == ["1"]

    assert holder.popen.returncode == 1, holder.tail()
    assert _says(holder, "RetrainSlotLost: lost the retrain slot of tuneline-classifier: "
                         "not renewed for"), holder.tail()
    assert _says(holder, "stopped before register") and not _says(holder, "STILL HOLDING")


def test_a_run_that_lost_its_slot_stops_before_its_next_stage(tmp_path, tiny_backbone_dir):
    from components.registry.versions import list_versions

    cue = tmp_path / "check-now"
    with tiny_project_server(tmp_path, tiny_backbone_dir, _slot_params()) as project:
        api, server = project.api, project.server
        stalled = Proc([str(BIN / "tuneline"), "run", "--params", str(project.params_file)],
                       project.env, tmp_path, tmp_path / "stalled.log")
        with running(stalled):
            wait_for(lambda: api.http.get(SLOT).status_code == 200, SERVER_TIMEOUT_S,
                     "the retrain to take the slot", [server, stalled], interval=0.1)
            os.killpg(stalled.popen.pid, signal.SIGSTOP)  # it stalls for longer than the TTL
            taker = _holder(project, cue)
            with running(taker):
                wait_for(lambda: _says(taker, "HOLDING"), SERVER_TIMEOUT_S, "the slot to be "
                         "taken over", [server, taker], interval=0.2)
                os.killpg(stalled.popen.pid, signal.SIGCONT)
                stalled.popen.wait(timeout=600)
                cue.touch()  # the new holder checks after the old one released what it had
                taker.popen.wait(timeout=120)
            (run,) = api.flow_runs()
            task_names = [t["name"].rsplit("-", 1)[0] for t in api.task_runs(run["id"])]

    took = re.search(r"took the 'retrain-slot-tuneline-classifier' slot after ([\d.]+) s",
                     taker.log.read_text())
    assert took and TTL <= float(took.group(1)) <= TTL + 10 * RENEW, taker.tail()
    assert stalled.popen.returncode == 5, stalled.tail()  # BUSY: nothing was registered
    assert run["state"]["type"] == "FAILED"
    assert "lost the retrain slot of tuneline-classifier" in run["state"]["message"]
    assert "register" not in task_names and "gate" not in task_names, task_names
    assert list_versions(load_params(project.params_file)) == []
    # The old holder's release did not free the slot the new holder took.
    assert taker.popen.returncode == 0 and _says(taker, "STILL HOLDING"), taker.tail()


def test_a_restart_shorter_than_the_ttl_costs_the_holder_nothing(tmp_path, tiny_backbone_dir):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cue = tmp_path / "check-now"
    with tiny_project_server(tmp_path, tiny_backbone_dir, _slot_params(ttl=120)) as project:
        params = load_params(project.params_file)
        holder = _holder(project, cue)
        with running(holder):
            wait_for(lambda: _says(holder, "HOLDING"), SERVER_TIMEOUT_S, "the holder to take "
                     "the slot", [project.server, holder], interval=0.2)
            project.server.kill()
            server = start_prefect_server(tmp_path, project.env, "server-restarted.log")
            with running(server), temporary_settings(
                    updates={PREFECT_API_URL: project.env["PREFECT_API_URL"]}):
                renewed = _renewed_at(project)
                wait_for(lambda: _renewed_at(project) != renewed, 60, "a renewal after the "
                         "restart", [server, holder], interval=0.2)
                with pytest.raises(RetrainBusy, match=r"is running \(pid \d+ on"), \
                        one_retrain_per_model(params, logging.getLogger(), "skip"):
                    pass
                cue.touch()
                holder.popen.wait(timeout=120)
                assert holder.popen.returncode == 0 and _says(holder, "STILL HOLDING"), \
                    holder.tail()
                started = time.monotonic()
                with one_retrain_per_model(params, logging.getLogger(), "skip") as slot:
                    slot.check("ingest")  # freed by the holder: taken at once
                assert time.monotonic() - started < 30
                assert project.api.http.get(SLOT).status_code == 404  # and freed again


def _renewed_at(project) -> str | None:
    try:
        r = project.api.http.get(SLOT)
    except httpx.HTTPError:
        return None
    return r.json()["value"]["renewed_at"] if r.status_code == 200 else None
