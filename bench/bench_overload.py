"""Serving at 4x its saturation throughput: bounded memory, 503s instead of timeouts, recovery.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_overload \
        [--overload 4] [--seconds 30] [--per-request 8] [--client-timeout 5] [--bundle DIR]

1. The fine-tuned MiniLM-L6 int8 bundle of bench_serve (trained and exported into
   bench/.cache/serve/ the first time, shared with bench_serve), or --bundle.
2. `python -m deploy.serve --bundle` on the params.yaml serve defaults. Saturation S
   (texts/s): --sat-clients closed-loop clients sending --per-request texts each.
3. One open-loop client process (bench.serve_measure open: arrivals at a fixed rate, whatever
   the answers, each request given up after --client-timeout): --light x S for
   --warm-seconds, then --overload x S for --seconds, then --light x S again for
   --recovery-seconds. The server's resident memory is read from /proc every 0.25 s.
4. The same run against a server whose back-pressure is lifted (queue, deadline and
   connection limit set out of reach): how the server behaved before it had any.
Goals with back-pressure: no request times out at the client; refusals are 503s with
Retry-After answered within 50 ms (p99); goodput during the overload stays >= 0.8 S; the
queue never holds more than serve.max_queued_texts; RSS grows less than 50 MB over light
load and less than 5 MB from the first half of the overload to the second (a plateau);
p99 latency is back within 2x the light-load p99 within 2 s after the overload stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from bench.bench_serve import (
    WORK,
    bench_params,
    exported_bundles,
    free_port,
    prepared_data,
    trained_model,
    wait_ready,
)
from bench.common import PROJECT_ROOT, run_isolated, write_result
from bench.serve_profile import ForeignLoad
from components.config import Params

# Lifting back-pressure: every limit far beyond what a 30 s run can reach.
UNBOUNDED = ["serve.max_queued_texts=100000000", "serve.request_timeout_s=86400",
             "serve.stuck_batch_s=86400", "serve.limit_concurrency=100000"]
GOAL_MAX_RSS_GROWTH_MB = 50.0  # over light load: fuller batches take more arena memory
GOAL_MAX_RSS_CREEP_MB = 5.0    # second half of the overload over its first half
GOAL_MAX_REFUSAL_P99_MS = 50.0
GOAL_MIN_GOODPUT = 0.8
GOAL_RECOVERY_S = 2
GOAL_RECOVERY_P99_RATIO = 2.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def queued_texts(url: str) -> float | None:
    """The server's tuneline_queued_texts gauge (None when /metrics does not answer)."""
    try:
        text = httpx.get(url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("tuneline_queued_texts "):
            return float(line.split()[1])
    return None


class Sampler(threading.Thread):
    """The server's resident memory every `interval` s and its queue every `queue_every`
    samples, with Unix timestamps."""

    def __init__(self, pid: int, url: str, interval: float = 0.25, queue_every: int = 4) -> None:
        super().__init__(daemon=True)
        self.pid, self.url, self.interval, self.queue_every = pid, url, interval, queue_every
        self.rss: list[tuple[float, float]] = []
        self.queue: list[tuple[float, float | None]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.rss.append((time.time(), rss_mb(self.pid)))
            except (FileNotFoundError, ProcessLookupError):
                return
            if len(self.rss) % self.queue_every == 1:
                self.queue.append((time.time(), queued_texts(self.url)))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def start_server(params: Params, bundle: Path, port: int, overrides: list[str],
                 log: Path) -> subprocess.Popen:
    params_file = WORK / "overload-params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    sets = [x for o in overrides for x in ("--set", o)]
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.serve", "--params", str(params_file), "--bundle",
         str(bundle), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         *sets], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def saturation(url: str, pid: int, texts_file: Path, args) -> dict:
    run_isolated("bench.serve_measure", "load", "--url", url, "--texts", str(texts_file),
                 "--clients", str(args.sat_clients), "--seconds", "3",
                 "--per-request", str(args.per_request))  # warm-up
    with ForeignLoad(pid) as foreign:
        result = run_isolated("bench.serve_measure", "load", "--url", url, "--texts",
                              str(texts_file), "--clients", str(args.sat_clients), "--seconds",
                              str(args.sat_seconds), "--per-request", str(args.per_request))
    return {**result, "foreign_cores": foreign.cores}


def overload_run(params: Params, bundle: Path, texts_file: Path, args, sat_texts_per_s: float,
                 overrides: list[str], name: str) -> dict:
    """Light, overload and light again, open-loop, against a fresh server; RSS sampled."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(params, bundle, port, overrides, WORK / f"overload-{name}.log")
    try:
        wait_ready(url, server)
        run_isolated("bench.serve_measure", "load", "--url", url, "--texts", str(texts_file),
                     "--clients", "4", "--seconds", "2", "--per-request",
                     str(args.per_request))  # warm-up
        rate = sat_texts_per_s / args.per_request  # requests/s at saturation
        phases = [(args.light * rate, args.warm_seconds), (args.overload * rate, args.seconds),
                  (args.light * rate, args.recovery_seconds)]
        sampler = Sampler(server.pid, url)
        rss_idle = rss_mb(server.pid)
        sampler.start()
        with ForeignLoad(server.pid) as foreign:
            load = run_isolated(
                "bench.serve_measure", "open", "--url", url, "--texts", str(texts_file),
                "--phases", ",".join(f"{r:.3f}:{s:g}" for r, s in phases),
                "--per-request", str(args.per_request), "--client-timeout",
                str(args.client_timeout), "--max-connections", str(args.max_connections),
                timeout=sum(s for _, s in phases) + 600)
        sampler.stop()
        server_alive = server.poll() is None
        status = httpx.get(url + "/metrics", timeout=10).text if server_alive else ""
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # a backlog it will not finish: do not wait for it
            server.kill()
            server.wait(30)
    t0 = load["started_at_unix"]
    return {"overrides": overrides, "foreign_cores": foreign.cores, "rss_idle_mb": rss_idle,
            "rss_mb": by_phase(sampler.rss, load), "queued_texts": by_phase(sampler.queue, load),
            "rss_timeline": [(round(t - t0, 2), round(mb, 1)) for t, mb in sampler.rss],
            "queued_texts_timeline": [(round(t - t0, 2), q) for t, q in sampler.queue],
            "load": load, "server_request_counts": request_counts(status)}


def by_phase(samples: list[tuple[float, float | None]], load: dict) -> dict:
    """Peak and last value within each phase of the open-loop run; the overload phase also
    split in halves, so a plateau (bounded) tells from a climb (unbounded)."""
    t0 = load["started_at_unix"]
    light, over, rec = load["phases"]
    half = over["start_s"] + over["seconds"] / 2
    windows = {"light": (light["start_s"], over["start_s"]),
               "overload": (over["start_s"], rec["start_s"]),
               "overload_first_half": (over["start_s"], half),
               "overload_second_half": (half, rec["start_s"]),
               "recovery": (rec["start_s"], rec["start_s"] + rec["seconds"]),
               "after": (rec["start_s"] + rec["seconds"], float("inf"))}
    out = {}
    for name, (lo, hi) in windows.items():
        inside = [v for t, v in samples if lo <= t - t0 < hi and v is not None]
        out[name] = {"peak": max(inside, default=None), "last": inside[-1] if inside else None}
    return out


def request_counts(metrics_text: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(("tuneline_requests_total{route=\"/v1/predict\"",
                            "tuneline_request_errors_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def recovery_seconds(run: dict, p99_limit_ms: float) -> int | None:
    """Seconds after the overload until every request of a second is answered 200 with
    p99 <= p99_limit_ms, and stays so to the end; None when that never happens."""
    phases = run["load"]["phases"]
    start = int(phases[2]["start_s"])
    seconds = run["load"]["per_second"][start:]

    def healthy(s: dict) -> bool:
        return (s["requests"] > 0 and s["outcomes"].get("200", 0) == s["requests"]
                and s["ok_latency"]["p99_ms"] <= p99_limit_ms)

    for k in range(len(seconds)):
        if all(healthy(s) for s in seconds[k:]):
            return k
    return None


def summarize_run(run: dict, sat: float, light_p99: float) -> dict:
    light, over, rec = run["load"]["phases"]
    n = max(over["requests"], 1)
    outcomes = over["outcomes"]
    rss, queue = run["rss_mb"], run["queued_texts"]
    return {
        "foreign_cores": run["foreign_cores"],
        "rss_light_mb": rss["light"]["peak"],
        "rss_growth_mb": rss["overload"]["peak"] - rss["light"]["peak"],
        # a bounded server has reached its plateau after the first half of the overload
        "rss_growth_second_half_mb": (rss["overload_second_half"]["peak"]
                                      - rss["overload_first_half"]["peak"]),
        "rss_peak_mb": max(p["peak"] for p in rss.values() if p["peak"] is not None),
        "queued_texts_peak": queue["overload"]["peak"],
        "queued_texts_end_of_overload": queue["overload"]["last"],
        "queued_texts_end_of_recovery": queue["recovery"]["last"],
        "overload_outcomes": outcomes,
        "overload_share_200": outcomes.get("200", 0) / n,
        "overload_share_503": outcomes.get("503", 0) / n,
        "overload_share_client_timeout": outcomes.get("timeout", 0) / n,
        "overload_goodput_texts_per_s": over["ok_texts_per_s"],
        "overload_goodput_over_saturation": over["ok_texts_per_s"] / sat,
        "overload_ok_latency": over["ok_latency"],
        "overload_refused_latency": over["refused_latency"],
        "retry_after": over["retry_after"],
        "light_ok_latency": light["ok_latency"],
        "recovery_outcomes": rec["outcomes"],
        "recovery_ok_latency": rec["ok_latency"],
        "recovered_after_s": recovery_seconds(run, GOAL_RECOVERY_P99_RATIO * light_p99),
    }


def run(args: argparse.Namespace) -> dict:
    from components.data.files import load_split

    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    params = bench_params(WORK, argparse.Namespace(train_steps=args.train_steps, reload_s=60.0,
                                                   set=args.set))
    prepared = prepared_data(params, WORK)
    if args.bundle is not None:
        bundle = args.bundle
    else:
        model = trained_model(params, prepared, WORK, args.model_dir)
        bundle = exported_bundles(params, Path(model["model_dir"]), prepared, WORK)[0]
    texts, _ = load_split(prepared, "test")
    texts_file = WORK / "texts.json"
    texts_file.write_text(json.dumps(texts))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(params, bundle, port, [], WORK / "overload-saturation.log")
    try:
        wait_ready(url, server)
        sat = saturation(url, server.pid, texts_file, args)
    finally:
        server.terminate()
        server.wait(30)
    s = sat["texts_per_s"]
    bounded = overload_run(params, bundle, texts_file, args, s, [], "bounded")
    unbounded = (None if args.skip_unbounded else
                 overload_run(params, bundle, texts_file, args, s, UNBOUNDED, "unbounded"))
    light_p99 = bounded["load"]["phases"][0]["ok_latency"]["p99_ms"]
    b = summarize_run(bounded, s, light_p99)
    goals = {
        "no_client_timeouts": b["overload_outcomes"].get("timeout", 0) == 0
        and b["recovery_outcomes"].get("timeout", 0) == 0,
        "refusals_are_503_with_retry_after": b["overload_share_503"] > 0
        and b["retry_after"] == [str(params.serve.retry_after_s)],
        "refusals_fast": b["overload_refused_latency"].get("p99_ms", 1e9)
        <= GOAL_MAX_REFUSAL_P99_MS,
        "goodput_kept": b["overload_goodput_over_saturation"] >= GOAL_MIN_GOODPUT,
        "rss_bounded": b["rss_growth_mb"] <= GOAL_MAX_RSS_GROWTH_MB
        and b["rss_growth_second_half_mb"] <= GOAL_MAX_RSS_CREEP_MB,
        "queue_bounded": b["queued_texts_peak"] is not None
        and b["queued_texts_peak"] <= params.serve.max_queued_texts,
        "recovers": b["recovered_after_s"] is not None
        and b["recovered_after_s"] <= GOAL_RECOVERY_S,
    }
    return {
        "bundle": str(bundle),
        "serve": params.serve.model_dump(),
        "per_request": args.per_request,
        "saturation": sat,
        "saturation_texts_per_s": s,
        "offered_texts_per_s": {"light": args.light * s, "overload": args.overload * s},
        "overload_factor": args.overload,
        "client_timeout_s": args.client_timeout,
        "bounded": b,
        "unbounded": (summarize_run(unbounded, s, light_p99) if unbounded else None),
        "runs": {"bounded": bounded, "unbounded": unbounded},
        "goals": {"max_rss_growth_mb": GOAL_MAX_RSS_GROWTH_MB,
                  "max_rss_creep_mb": GOAL_MAX_RSS_CREEP_MB,
                  "max_refusal_p99_ms": GOAL_MAX_REFUSAL_P99_MS,
                  "min_goodput_over_saturation": GOAL_MIN_GOODPUT,
                  "max_recovery_s": GOAL_RECOVERY_S,
                  "recovery_p99_over_light_p99": GOAL_RECOVERY_P99_RATIO,
                  "met": goals, "all_met": all(goals.values())},
        "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_overload "
                   + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overload", type=float, default=4.0,
                        help="offered load during the overload, in multiples of saturation")
    parser.add_argument("--light", type=float, default=0.25,
                        help="offered load before and after, in multiples of saturation")
    parser.add_argument("--seconds", type=float, default=30, help="length of the overload")
    parser.add_argument("--warm-seconds", type=float, default=10)
    parser.add_argument("--recovery-seconds", type=float, default=20)
    parser.add_argument("--per-request", type=int, default=8, help="texts per request")
    parser.add_argument("--sat-clients", type=int, default=16,
                        help="closed-loop clients measuring saturation")
    parser.add_argument("--sat-seconds", type=float, default=15)
    parser.add_argument("--client-timeout", type=float, default=5.0,
                        help="seconds before an open-loop client gives up")
    parser.add_argument("--max-connections", type=int, default=1000,
                        help="connections the open-loop client keeps open at most")
    parser.add_argument("--skip-unbounded", action="store_true",
                        help="only the run with back-pressure")
    parser.add_argument("--train-steps", type=int, default=150,
                        help="fine-tuning steps when bench_serve's model is not cached yet")
    parser.add_argument("--model-dir", type=Path, help="a fine-tuned model folder to use")
    parser.add_argument("--bundle", type=Path, help="an exported bundle to serve")
    parser.add_argument("--set", action="append", default=[], help="param override")
    parser.add_argument("--name", default="overload", help="result name in bench/results/")
    write_result(parser.parse_args().name, run(parser.parse_args()))


if __name__ == "__main__":
    main()
