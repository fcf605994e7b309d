"""Model outcomes reach a person: against a real Prefect server, a promotion, a rejection
and a failed retrain become `tuneline.model.*` / flow-run events, and the automations
`tuneline deploy` creates POST them to the configured webhook (a local HTTP receiver)."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.prefect_support import BIN, free_port, tiny_project_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# Events pass through the server's trigger and action services before a POST goes out;
# on two loaded cores that has taken over two minutes.
NOTIFIED_WITHIN_S = 360


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                size = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(size) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [b.get("text", "") for b in self.bodies]


def test_promotion_rejection_and_failed_retrain_are_posted_to_the_webhook(tmp_path,
                                                                           tiny_backbone_dir):
    hook = Receiver()
    extra = [f"notify.webhook_url=http://127.0.0.1:{hook.port}/hook",
             "notify.events=[promoted, rejected, rolled-back, retrain-failed]"]
    try:
        with tiny_project_server(tmp_path, tiny_backbone_dir, extra) as project:
            env, api, server = project.env, project.api, project.server

            def cli(*args: str, code: int = 0) -> str:
                proc = subprocess.run([str(BIN / "tuneline"), *args, "--params",
                                       str(project.params_file)], env=env, cwd=tmp_path,
                                      capture_output=True, text=True, timeout=900)
                assert proc.returncode == code, proc.stdout + proc.stderr[-4000:]
                return proc.stdout

            subprocess.run([str(BIN / "prefect"), "work-pool", "create", "idle", "--type",
                            "process"], env=env, check=True, capture_output=True, timeout=120)
            cli("deploy", "--pool", "idle")
            names = sorted(a["name"] for a in api.http.post("/automations/filter",
                                                            json={}).json())
            assert [n for n in names if n.startswith("tuneline notify:")] == [
                f"tuneline notify: tuneline-classifier {w}"
                for w in ("promoted", "rejected", "retrain-failed", "rolled-back")]

            cli("run")                                              # v1: promoted
            try:
                wait_for(lambda: any("tuneline.model.promoted" in t for t in hook.texts()),
                         NOTIFIED_WITHIN_S, "the promotion's notification", [server])
            except AssertionError as exc:
                seen = [e["event"] for e in api.events("tuneline.")]
                raise AssertionError(f"{exc}\nposted: {hook.bodies}\nevents: {seen}") from None
            promoted = next(t for t in hook.texts() if "promoted" in t)
            assert "tuneline-classifier v1" in promoted and "the gate" in promoted

            cli("run", "--set", "gate.max_size_mb=0.001",           # v2: rejected, run failed
                "--set", "gate.fail_run_on_reject=true", code=4)
            try:
                wait_for(lambda: any("tuneline.model.rejected" in t for t in hook.texts()),
                         NOTIFIED_WITHIN_S, "the rejection's notification", [server])
                wait_for(lambda: any("failed" in b.get("subject", "") for b in hook.bodies),
                         NOTIFIED_WITHIN_S, "the failed run's notification", [server])
            except AssertionError as exc:
                seen = [e["event"] for pre in ("tuneline.", "prefect.flow-run.")
                        for e in api.events(pre)]
                raise AssertionError(f"{exc}\nposted: {hook.bodies}\nevents: {seen}") from None
            rejected = next(t for t in hook.texts() if "tuneline.model.rejected" in t)
            assert "v2" in rejected and "size_mb" in rejected
            # The server writes events to its store in batches, after the triggers saw them.
            wait_for(lambda: {"tuneline.model.promoted", "tuneline.model.rejected"} <= {
                e["event"] for e in api.events("tuneline.model.")}, NOTIFIED_WITHIN_S,
                "both model events in the event store", [server])

            # An empty webhook URL removes the automations on the next deploy.
            cli("deploy", "--pool", "idle", "--set", "notify.webhook_url=")
            names = [a["name"] for a in api.http.post("/automations/filter", json={}).json()]
            assert not [n for n in names if n.startswith("tuneline notify:")]
    finally:
        hook.server.shutdown()
