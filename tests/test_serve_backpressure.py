"""Overload, deadlines, stuck workers, error bodies and who may connect: real server
processes (`python -m deploy.serve` with faults on cue, tests/serve_faults.py), real HTTP,
real ONNX Runtime on a tiny exported bundle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from components.config import ConfigError, load_params
from deploy.serve.auth import is_loopback
from tests.conftest import TINY_LABELS
from tests.serve_faults import SECRET
from tests.serve_support import ROOT, export_tiny_bundle, free_port, server_process, wait_for

pytestmark = pytest.mark.integration

# One worker taking one request per batch: a stalled batch holds the only worker, and
# whatever comes next waits in the queue where the test can count it.
ONE_AT_A_TIME = ["--set", "serve.threads=1", "--set", "serve.workers=1",
                 "--set", "serve.max_batch=1", "--set", "serve.max_texts=1"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tokenizer_dir) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("backpressure") / "bundle",
                              tokenizer_dir, TINY_LABELS, seed=3)


def post(url: str, *texts: str, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/predict", json={"texts": list(texts)}, timeout=60, **kwargs)


def metric(url: str, sample: str) -> float | None:
    """The value of one exact sample line of /metrics (None when absent)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def stall(pool: ThreadPoolExecutor, server) -> Future:
    """Send a request whose batch hangs; return once inference is stuck on it."""
    reply = pool.submit(post, server.url, "STALL")
    wait_for(lambda: (server.control / "stalled").exists())
    return reply


def timed_post(url: str, *texts: str) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    resp = post(url, *texts)
    return resp, time.perf_counter() - t0


def test_a_full_queue_is_refused_at_once_with_retry_after(bundle, tmp_path):
    args = [*ONE_AT_A_TIME, "--set", "serve.max_queued_texts=3",
            "--set", "serve.retry_after_s=7", "--set", "serve.request_timeout_s=60"]
    with server_process(bundle, tmp_path, *args) as server, ThreadPoolExecutor(8) as pool:
        stalled = stall(pool, server)
        queued = [pool.submit(post, server.url, f"queued {i}") for i in range(3)]
        wait_for(lambda: metric(server.url, "tuneline_queued_texts") == 3)
        refused, seconds = timed_post(server.url, "one too many")
        shed = metric(server.url, 'tuneline_request_errors_total{reason="overloaded"}')
        (server.control / "release").touch()
        answers = [f.result(timeout=60) for f in (stalled, *queued)]
        after = post(server.url, "the queue has drained")
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "7"
    assert "overloaded" in refused.json()["error"]
    assert seconds < 1.0, "a refusal must not wait for the stalled batch"
    assert shed == 1
    assert [a.status_code for a in answers] == [200] * 4  # what was queued is still served
    assert after.status_code == 200


def test_past_the_deadline_the_answer_is_504_and_queued_work_is_dropped(bundle, tmp_path):
    args = [*ONE_AT_A_TIME, "--set", "serve.request_timeout_s=1"]
    with server_process(bundle, tmp_path, *args) as server, ThreadPoolExecutor(4) as pool:
        t0 = time.perf_counter()
        stalled = stall(pool, server)
        behind, behind_s = timed_post(server.url, "queued behind the stall")
        running = stalled.result(timeout=30)
        running_s = time.perf_counter() - t0
        (server.control / "release").touch()
        after = post(server.url, "served again")
        deadlines = metric(server.url, 'tuneline_request_errors_total{reason="deadline_exceeded"}')
        seen = (server.control / "seen.txt").read_text().splitlines()
    assert running.status_code == 504, running.text
    assert "request_timeout_s=1" in running.json()["error"]
    assert "still running" in running.json()["error"]
    assert 0.9 <= running_s < 5
    assert behind.status_code == 504 and "still queued" in behind.json()["error"]
    assert 0.9 <= behind_s < 3
    assert deadlines == 2
    assert after.status_code == 200
    assert "served again" in seen
    assert "queued behind the stall" not in seen, "work dropped at its deadline must not run"


def test_a_stuck_batch_fails_readiness_and_liveness_until_it_returns(bundle, tmp_path):
    args = ["--set", "serve.threads=1", "--set", "serve.workers=2",
            "--set", "serve.stuck_batch_s=1", "--set", "serve.request_timeout_s=0.5"]
    with server_process(bundle, tmp_path, *args) as server, ThreadPoolExecutor(2) as pool:
        stalled = stall(pool, server)
        assert stalled.result(timeout=30).status_code == 504
        ready = wait_for(lambda: (r := httpx.get(server.url + "/readyz")).status_code == 503 and r)
        alive = httpx.get(server.url + "/healthz")
        other_worker = post(server.url, "the other worker still answers")
        running = metric(server.url, "tuneline_batch_running_seconds")
        (server.control / "release").touch()
        wait_for(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        alive_again = httpx.get(server.url + "/healthz")
    body = ready.json()
    assert body["batch_stuck"] is True and body["batch_running_s"] > 1
    assert body["model_version"] is not None  # the model is fine; a worker is not
    assert alive.status_code == 503 and alive.json()["status"] == "stuck"
    assert other_worker.status_code == 200
    assert running > 1
    assert alive_again.status_code == 200


def test_an_unexpected_error_answers_a_generic_500_and_logs_the_details(bundle, tmp_path):
    with server_process(bundle, tmp_path, "--set", "serve.threads=1") as server:
        resp = post(server.url, "BOOM")
        ok = post(server.url, "fine")
        log = server.log()
    assert resp.status_code == 500
    body = resp.json()
    assert set(body) == {"error", "error_id"} and body["error"] == "internal error"
    for leak in ("secret", "RuntimeError", "Traceback", "/srv/"):
        assert leak not in resp.text
    assert ok.status_code == 200
    # the operator finds the request's error by its id, with the cause and the traceback
    assert body["error_id"] in log and SECRET in log and "Traceback" in log


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "serve.example.com"])
def test_a_non_loopback_bind_without_a_token_refuses_to_start(bundle, host):
    env = {k: v for k, v in os.environ.items() if k != "TUNELINE_API_TOKEN"}
    entry = [sys.executable, "-m", "deploy.serve"]
    cli = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
           "serve"]
    for command in (entry, cli):
        proc = subprocess.run([*command, "--bundle", str(bundle), "--host", host, "--port",
                               str(free_port())], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"refusing to listen on {host} without a token" in proc.stderr
        assert "TUNELINE_API_TOKEN" in proc.stderr and "--insecure" in proc.stderr


def test_loopback_names():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.4", "example.com", ""]))


def test_beyond_loopback_the_token_is_required_and_insecure_is_explicit(bundle, tmp_path):
    # A token from a Secret made with --from-file ends in a newline no client sends.
    with server_process(bundle, tmp_path / "token", "--set", "serve.threads=1",
                        host="0.0.0.0", env={"TUNELINE_API_TOKEN": "s3cret\n"}) as server:
        missing = post(server.url, "hello")
        wrong = post(server.url, "hello", headers={"Authorization": "Bearer s3cre"})
        good = post(server.url, "hello", headers={"Authorization": "Bearer s3cret"})
        probes = [httpx.get(server.url + p).status_code for p in ("/healthz", "/readyz")]
    assert [missing.status_code, wrong.status_code] == [401, 401]
    assert good.status_code == 200, good.text
    assert probes == [200, 200]
    with server_process(bundle, tmp_path / "insecure", "--set", "serve.threads=1",
                        "--insecure", host="0.0.0.0") as server:
        open_door = post(server.url, "hello")
        log = server.log()
    assert open_door.status_code == 200
    assert "without a token (--insecure)" in log


def test_uvicorn_limits_connections_and_silent_ones_cannot_hold_the_limit(bundle, tmp_path):
    args = ["--set", "serve.threads=1", "--set", "serve.limit_concurrency=4",
            "--set", "serve.timeout_keep_alive_s=1"]
    with server_process(bundle, tmp_path, *args) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
                  for _ in range(4)]
        time.sleep(0.2)
        over = httpx.get(server.url + "/healthz")
        # a client trickling its headers a byte at a time is cut off too
        trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        t0, trickle_closed_s = time.perf_counter(), None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                trickle_closed_s = time.perf_counter() - t0
                break
            time.sleep(0.1)
        # the silent ones were closed by the server, though their clients keep them
        closed = [s.recv(1) == b"" for s in silent]
        under = httpx.get(server.url + "/healthz")
        for s in (*silent, trickle):
            s.close()
    assert over.status_code == 503 and over.text == "Service Unavailable"
    assert trickle_closed_s is not None and trickle_closed_s < 3
    assert all(closed)
    assert under.status_code == 200


def test_a_queue_smaller_than_one_request_is_a_config_error():
    with pytest.raises(ConfigError, match="max_queued_texts .* must be at least max_texts"):
        load_params(overrides=["serve.max_texts=64", "serve.max_queued_texts=32"])


def test_a_body_limit_smaller_than_one_text_is_a_config_error():
    with pytest.raises(ConfigError, match="max_body_bytes .* must be at least 6 x max_text_chars"):
        load_params(overrides=["serve.max_text_chars=100000", "serve.max_body_bytes=500000"])
