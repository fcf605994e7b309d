"""Serving under load: MiniLM-L6 int8 over HTTP on loopback, against the runtime's ceiling.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_serve \
        [--clients 16] [--seconds 30] [--per-request 1] [--sat-clients 32] [--model-dir DIR]

1. A fine-tuned all-MiniLM-L6-v2 classifier on the demo corpus (--model-dir, or trained
   here for --train-steps steps on its own copy of the demo corpus, cached under
   bench/.cache/serve/ so reruns skip training), exported twice
   with the project's exporter (per-channel and per-tensor int8: two distinct versions).
2. Both registered in a fresh MLflow SQLite store: v1 @champion, v2 @challenger.
3. The ceiling: the best texts/s ONNX Runtime reaches in one process on the same test
   texts (`bench.serve_ceiling_measure`: batch sizes up to serve.max_batch, thread layouts on the
   same 2 cores, padding schemes, spinning), and raw batch-1 latency.
4. `python -m deploy.serve` follows @champion. HTTP batch-1 latency from a sequential
   client; then saturation: --sat-clients concurrent clients for --seconds with the CPU of
   every server thread and of the client accounted (`bench.serve_profile`); then
   --clients clients while v2 is promoted halfway: the server must switch without
   failing a request.
Goals: 0 failed requests; HTTP texts/s at saturation >= 0.9 x the in-process ceiling;
HTTP batch-1 p50 <= 2x raw ORT int8 batch-1 p50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from bench.common import PROJECT_ROOT, run_isolated, write_result
from bench.serve_profile import ForeignLoad, cpu_profile, server_counters, thread_cpu
from components.config import Params, load_params

WORK = PROJECT_ROOT / "bench" / ".cache" / "serve"
GOAL_CEILING_RATIO = 0.9
GOAL_LATENCY_RATIO = 2.0
CORES = 2


def bench_params(work: Path, args: argparse.Namespace) -> Params:
    overrides = [f"registry.tracking_uri=sqlite:///{work}/mlflow.db",
                 f"registry.artifact_root={work}/mlartifacts",
                 f"paths.checkpoints={work}/checkpoints",
                 f"finetune.max_steps={args.train_steps}", "finetune.eval_every=50",
                 "finetune.eval_max_batches=10", f"serve.reload_interval_s={args.reload_s}",
                 "export.latency_repeats=20", *args.set]
    return load_params(overrides=overrides)


def prepared_data(params: Params, work: Path) -> Path:
    """The demo corpus prepared into the work folder (independent of paths.prepared)."""
    out = work / "prepared"
    if not (out / "test.jsonl").exists():
        from components.data.demo import build_demo_corpus
        from components.data.streaming import prepare_dataset

        build_demo_corpus(work / "demo", params.demo)
        prepare_dataset(work / "demo" / "labeled.jsonl", out, params.data)
    return out


def trained_model(params: Params, prepared: Path, work: Path, model_dir: Path | None) -> dict:
    """The fine-tuned MiniLM folder (given, cached, or trained now) and its own metadata."""
    out = model_dir or work / "model"
    if not (out / "tuneline_model.json").exists():
        from components.train.finetune import train

        train(params, prepared, out)
    meta = json.loads((out / "tuneline_model.json").read_text())
    metrics = meta.get("metrics", {})
    return {"model_dir": str(out), "backbone": meta.get("backbone"),
            "strategy": metrics.get("strategy"), "train_steps": metrics.get("steps"),
            "val_accuracy": metrics.get("val_accuracy"), "max_length": meta.get("max_length")}


def exported_bundles(params: Params, model_dir: Path, prepared: Path, work: Path) -> list[Path]:
    """Two int8 exports of the same classifier (per-channel and per-tensor weights)."""
    from components.release.bundle import export_bundle

    out = []
    for name, per_channel in (("bundle-a", True), ("bundle-b", False)):
        bundle = work / name
        if not (bundle / "manifest.json").exists():
            p = params.model_copy(deep=True)
            p.export.per_channel = per_channel
            export_bundle(model_dir, prepared, bundle, p)
        out.append(bundle)
    return out


def fresh_registry(params: Params, work: Path, bundles: list[Path], prepared: Path
                   ) -> list[str]:
    """A new SQLite store with bundles[0] @champion and bundles[1] @challenger (both with
    their prediction reference, so the server pays for drift monitoring as in production)."""
    from components.registry.tracking import start_run
    from components.registry.versions import publish

    (work / "mlflow.db").unlink(missing_ok=True)
    shutil.rmtree(work / "mlartifacts", ignore_errors=True)
    versions = []
    for bundle, passed in zip(bundles, (True, False), strict=True):
        run_id = start_run(params, None, run_name=f"bench-serve-{bundle.name}")
        versions.append(publish(params, run_id, bundle,
                                {"passed": passed, "reasons": [] if passed else ["bench"]},
                                prepared_dir=prepared)["version"])
    return versions


def start_server(params: Params, work: Path, port: int) -> subprocess.Popen:
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    shutil.rmtree(work / "cache", ignore_errors=True)
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.serve", "--params", str(params_file), "--host",
         "127.0.0.1", "--port", str(port), "--cache-dir", str(work / "cache"),
         "--log-level", "warning"],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {WORK / 'server.log'}")
        try:
            resp = httpx.get(url + "/readyz", timeout=5)
            if resp.status_code == 200:
                return resp.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server not ready in time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, float]:
    """A few server-side numbers from /metrics."""
    wanted = ("tuneline_batch_size_texts_sum", "tuneline_batch_size_texts_count",
              'tuneline_model_reloads_total{result="success"}',
              'tuneline_model_reloads_total{result="failure"}')
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


def load_with_champion_move(params: Params, url: str, texts_file: Path, args, new: str) -> dict:
    """Concurrent clients in their own process; promote `new` halfway through."""
    from components.registry.versions import promote

    client = subprocess.Popen(
        [sys.executable, "-m", "bench.serve_measure", "load", "--url", url, "--texts",
         str(texts_file), "--clients", str(args.clients), "--seconds", str(args.seconds),
         "--per-request", str(args.per_request)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    time.sleep(args.seconds / 2)
    promote(params, new, reason="bench: champion change under load")
    promoted_at = time.perf_counter() - t0
    stdout, stderr = client.communicate(timeout=args.seconds + 120)
    if client.returncode != 0:
        raise RuntimeError(f"load client failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["promoted_at_s"] = promoted_at
    return result


def saturation(url: str, pid: int, texts_file: Path, args, seconds: float,
               ceiling: float) -> dict:
    """--sat-clients clients, no champion move; CPU accounted per thread and per stage."""
    cpu0, counters0 = thread_cpu(pid), server_counters(url)
    load = run_isolated("bench.serve_measure", "load", "--url", url, "--texts", str(texts_file),
                        "--clients", str(args.sat_clients), "--seconds", str(seconds),
                        "--per-request", str(args.sat_per_request))
    cpu1, counters1 = thread_cpu(pid), server_counters(url)
    return {**load, "profile": cpu_profile((cpu0, cpu1), (counters0, counters1), load,
                                           ceiling, CORES)}


def interleaved(url: str, pid: int, bundle: Path, texts_file: Path, args, cell: dict) -> dict:
    """Rounds of [the ceiling's best cell in process, then HTTP at saturation], same length.

    Other jobs on a shared machine come and go: each phase records how many cores other
    processes kept busy, a round counts as quiet when both phases stayed under
    --max-foreign cores, and rounds go on until --rounds quiet ones (at most 3x as many
    tries). The ratio is the median over quiet rounds (over all, flagged, if none was).
    The CPU ratio (ceiling's CPU per text / server + client CPU per text) hardly depends
    on other jobs: it bounds what the throughput ratio can reach on idle cores.
    """
    key = {k: cell[k] for k in ("threads", "streams", "batch", "padding", "spinning")}
    run_isolated("bench.serve_measure", "load", "--url", url, "--texts", str(texts_file),
                 "--clients", str(args.sat_clients), "--seconds", "3")  # warm-up
    rounds = []
    for _ in range(3 * args.rounds):
        with ForeignLoad(pid) as ort_side:
            ort = run_isolated("bench.serve_ceiling_measure", "--bundle", str(bundle), "--texts",
                               str(texts_file), "--cell", json.dumps(key), "--seconds",
                               str(args.round_seconds))
        with ForeignLoad(pid) as http_side:
            http = saturation(url, pid, texts_file, args, args.round_seconds,
                              ort["texts_per_s"])
        foreign = max(ort_side.cores, http_side.cores)
        rounds.append({"ort_texts_per_s": ort["texts_per_s"],
                       "http_texts_per_s": http["texts_per_s"],
                       "ratio": http["texts_per_s"] / ort["texts_per_s"],
                       "cpu_ratio": ort["cpu_us_per_text"] / http["profile"]["cpu_us_per_text"],
                       "ort_cpu_us_per_text": ort["cpu_us_per_text"],
                       "foreign_cores": foreign, "quiet": foreign < args.max_foreign, **http})
        if sum(r["quiet"] for r in rounds) >= args.rounds:
            break
    used = [r for r in rounds if r["quiet"]] or rounds

    def median(key: str) -> float:
        return statistics.median(r[key] for r in used)

    return {"cell": key, "rounds": rounds, "quiet_rounds": sum(r["quiet"] for r in rounds),
            "max_foreign_cores": args.max_foreign, "median_ratio": median("ratio"),
            "median_cpu_ratio": median("cpu_ratio"),
            "median_ort_texts_per_s": median("ort_texts_per_s"),
            "median_http_texts_per_s": median("http_texts_per_s")}


def run(args: argparse.Namespace) -> dict:
    from components.data.files import load_split

    work = WORK
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    params = bench_params(work, args)
    prepared = Path(args.prepared) if args.prepared else prepared_data(params, work)
    model = trained_model(params, prepared, work, args.model_dir)
    bundles = exported_bundles(params, Path(model["model_dir"]), prepared, work)
    if args.prepare_only:
        return {"prepared_only": True, "model": model, "bundles": [str(b) for b in bundles]}
    versions = fresh_registry(params, work, bundles, prepared)
    texts, _ = load_split(prepared, "test")
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    raw_args = ["raw", "--bundle", str(bundles[0]), "--texts", str(texts_file),
                "--repeats", str(args.repeats), "--threads", str(params.serve.threads),
                *(["--spinning"] if params.serve.ort_spinning else [])]
    raw_before = run_isolated("bench.serve_measure", *raw_args)
    cfg = params.serve
    ceiling = run_isolated(
        "bench.serve_ceiling_measure", "--bundle", str(bundles[0]), "--texts", str(texts_file),
        "--max-batch", str(cfg.max_batch), "--threads", str(cfg.threads), "--workers",
        str(cfg.workers), "--call-cost", str(cfg.bucket_call_cost_tokens),
        "--seconds", "1", "--repeats", "2", *(["--spinning"] if cfg.ort_spinning else []))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(params, work, port)
    try:
        first = wait_ready(url, server)
        latency = run_isolated("bench.serve_measure", "latency", "--url", url, "--texts",
                               str(texts_file), "--repeats", str(args.repeats))
        sat = interleaved(url, server.pid, bundles[0], texts_file, args, ceiling["ceiling"])
        load = load_with_champion_move(params, url, texts_file, args, versions[1])
        final = httpx.get(url + "/readyz").json()
        server_metrics = scrape(url)
    finally:
        server.terminate()
        server.wait(30)
    raw_after = run_isolated("bench.serve_measure", *raw_args)
    args.loadavg = {"before": load_before, "after": os.getloadavg()}
    return summarize(params, model, versions, first, final, raw_before, raw_after, latency,
                     load, server_metrics, args, ceiling, sat)


def summarize(params, model, versions, first, final, raw_before, raw_after, latency, load,
              server_metrics, args, ceiling, sat) -> dict:
    # The stricter (faster) of the two raw runs is the reference for the ratio.
    raw_p50 = min(raw_before["session_run_b1"]["p50_ms"], raw_after["session_run_b1"]["p50_ms"])
    raw_predict_p50 = min(raw_before["predict_b1"]["p50_ms"], raw_after["predict_b1"]["p50_ms"])
    http_p50 = latency["latency_b1"]["p50_ms"]
    batches = server_metrics.get("tuneline_batch_size_texts_count", 0)
    switched = final["model_version"] == versions[1] and versions[1] in load["versions"]
    ratio = sat["median_ratio"]
    goals = {
        "zero_failed_requests": load["failed_requests"] == 0 and latency["failures"] == 0
        and all(r["failed_requests"] == 0 for r in sat["rounds"]),
        "http_over_ceiling": ratio >= GOAL_CEILING_RATIO,
        "b1_p50_within_2x_raw_ort": http_p50 <= GOAL_LATENCY_RATIO * raw_p50,
        "champion_switched_under_load": switched,
    }
    return {
        "model": {**model, "registered_versions": versions},
        "serve": params.serve.model_dump(),
        "raw_ort_int8": {"before": raw_before, "after": raw_after,
                         "session_run_b1_p50_ms": raw_p50,
                         "tokenize_run_b1_p50_ms": raw_predict_p50},
        "ceiling_grid": ceiling,
        "saturation": sat,
        "ort_ceiling_texts_per_s": sat["median_ort_texts_per_s"],
        "http_texts_per_s_at_saturation": sat["median_http_texts_per_s"],
        "http_over_ceiling": ratio,
        "cpu_ratio": sat["median_cpu_ratio"],
        # the grid's best cell without the global length sort, measured in the grid phase
        "grid_best_without_global_sort_over_best": (
            ceiling["ceiling_without_global_sort"]["texts_per_s"]
            / ceiling["ceiling"]["texts_per_s"]),
        "http_b1": latency,
        "http_b1_p50_over_raw_session_run": http_p50 / raw_p50,
        "http_b1_p50_over_raw_tokenize_run": http_p50 / raw_predict_p50,
        "load": load,
        "server": {**server_metrics, "mean_batch_texts":
                   server_metrics.get("tuneline_batch_size_texts_sum", 0) / max(batches, 1),
                   "first_version": first["model_version"],
                   "final_version": final["model_version"]},
        "goals": {"min_http_over_ceiling": GOAL_CEILING_RATIO, "max_b1_ratio": GOAL_LATENCY_RATIO,
                  "met": goals, "all_met": all(goals.values())},
        # 1-minute load averages: how busy the 2-core machine was around the run
        "loadavg_1m": {k: v[0] for k, v in args.loadavg.items()},
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_serve "
                   + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--per-request", type=int, default=1, help="texts per request")
    parser.add_argument("--sat-clients", type=int, default=32,
                        help="clients of the saturation run")
    parser.add_argument("--sat-per-request", type=int, default=1,
                        help="texts per request in the saturation run")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating ceiling / HTTP saturation rounds")
    parser.add_argument("--round-seconds", type=float, default=8.0)
    parser.add_argument("--max-foreign", type=float, default=0.1,
                        help="cores other processes may keep busy in a quiet round")
    parser.add_argument("--repeats", type=int, default=300, help="batch-1 latency samples")
    parser.add_argument("--reload-s", type=float, default=2.0, help="serve.reload_interval_s")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--model-dir", type=Path, help="a fine-tuned model folder to use")
    parser.add_argument("--prepared", type=Path, help="prepared data (default: the demo corpus)")
    parser.add_argument("--set", action="append", default=[], help="param override")
    parser.add_argument("--name", default="serve", help="result name in bench/results/")
    parser.add_argument("--prepare-only", action="store_true",
                        help="train and export into the cache, measure nothing")
    args = parser.parse_args()
    result = run(args)
    if args.prepare_only:
        print(json.dumps(result, indent=2))
    else:
        write_result(args.name, result)


if __name__ == "__main__":
    main()
