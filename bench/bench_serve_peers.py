"""`tuneline serve` side by side with what a user would deploy instead, in one run.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_serve_peers \
        [--clients 16] [--rounds 3] [--round-seconds 10] [--long-docs 8]

The same fine-tuned all-MiniLM-L6-v2 classifier as bench.bench_serve (trained and exported
into bench/.cache/serve/ on first use), registered once in a fresh MLflow store as
@champion. Contestants, all on the same 2 cores, running side by side:

- `tuneline serve`: `python -m deploy.serve` following @champion (int8, micro-batching);
- `mlflow models serve` of the same registered version (the project's pyfunc over the
  same int8 bundle), on its defaults (one worker);
- FastAPI + transformers `pipeline("text-classification")` on torch, fp32, the same
  fine-tuned weights (bench/serve_peers_app.py);
- FastAPI + plain ONNX Runtime on the bundle's fp32 graph (bench/serve_peers_app.py);
- the in-process ceiling: the best cell of bench.serve_ceiling_measure's grid (batch size,
  thread layout, padding, spinning) on the int8 graph, pre-tokenized texts, no HTTP.

Texts: the demo test split plus --long-docs documents of 5,000-20,000 characters (test
texts of one label joined), each served truncated to model.max_length tokens. Every HTTP
contestant gets the same closed-loop load: --clients connections, one text per request.
Rounds alternate the contestants (the order rotates each round) so that other jobs on a
shared machine hit all of them alike; each figure is the median over rounds, failures
the sum. CPU-seconds a text: the server's process tree (workers included) over the texts
it answered; RSS: the tree's resident memory after the last round, and the peak.
Then, in the same rounds, every HTTP contestant gets the same open-loop schedule: --rate
requests a second (Poisson arrivals, one text each) for --rate-seconds, latency counted
from each request's scheduled arrival (p50/p99 at a fixed request rate).
Goals: tuneline >= 2x the requests/s of `mlflow models serve`, 0 failed requests on the
long texts, and ahead of every HTTP peer in texts/s with a p99 no worse.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from bench.bench_serve import free_port, prepared_data, trained_model
from bench.common import PROJECT_ROOT, RESULTS_DIR, run_isolated, write_result
from components.config import Params, load_params

SERVE_WORK = PROJECT_ROOT / "bench" / ".cache" / "serve"  # model + bundles (bench_serve's)
WORK = PROJECT_ROOT / "bench" / ".cache" / "serve_peers"  # registry, logs, texts
GOAL_OVER_MLFLOW = 2.0
HTTP = ("tuneline", "mlflow", "fastapi_torch", "fastapi_onnx_fp32")
NAMES = {"tuneline": "tuneline serve (int8)", "mlflow": "mlflow models serve (same version)",
         "fastapi_torch": "FastAPI + transformers pipeline (torch fp32)",
         "fastapi_onnx_fp32": "FastAPI + ONNX Runtime (fp32 graph)",
         "ceiling": "in-process ORT int8 ceiling (no HTTP)"}


def bench_params(args: argparse.Namespace, cache: Path, work: Path) -> Params:
    return load_params(overrides=[
        f"registry.tracking_uri=sqlite:///{work}/mlflow.db",
        f"registry.artifact_root={work}/mlartifacts", f"paths.checkpoints={cache}/checkpoints",
        f"finetune.max_steps={args.train_steps}", "finetune.eval_every=50",
        "finetune.eval_max_batches=10", "export.latency_repeats=20", *args.set])


def exported_bundle(params: Params, model_dir: Path, prepared: Path, cache: Path) -> Path:
    """The int8 export bench_serve calls `bundle-a` (per-channel weights), made if missing."""
    from components.release.bundle import export_bundle

    bundle = cache / "bundle-a"
    if not (bundle / "manifest.json").exists():
        p = params.model_copy(deep=True)
        p.export.per_channel = True
        export_bundle(model_dir, prepared, bundle, p)
    return bundle


def register(params: Params, bundle: Path, prepared: Path, work: Path) -> str:
    """A fresh MLflow store holding `bundle` as the @champion version."""
    from components.registry.tracking import start_run
    from components.registry.versions import publish

    (work / "mlflow.db").unlink(missing_ok=True)
    shutil.rmtree(work / "mlartifacts", ignore_errors=True)
    run_id = start_run(params, None, run_name="bench-serve-peers")
    return publish(params, run_id, bundle, {"passed": True, "reasons": []},
                   prepared_dir=prepared)["version"]


def bench_texts(prepared: Path, long_docs: int) -> tuple[list[str], int]:
    """The test split with `long_docs` documents spread through it: test texts of one label
    joined until 5,000-20,000 characters (targets evenly spaced). Returns (texts, longest)."""
    from components.data.files import load_split

    texts, labels = load_split(prepared, "test")
    by_label: dict = {}
    for text, label in zip(texts, labels, strict=True):
        by_label.setdefault(label, []).append(text)
    pools = sorted(by_label.values(), key=len, reverse=True)
    docs = []
    for k in range(long_docs):
        target = 5_000 + (15_000 * k) // max(long_docs - 1, 1)
        pool, doc, i = pools[k % len(pools)], "", 0
        while len(doc) < target:
            doc += ("\n\n" if doc else "") + pool[i % len(pool)]
            i += 1
        docs.append(doc[:target])
    out = list(texts)
    step = max(len(out) // max(long_docs, 1), 1)
    for k, doc in enumerate(docs):
        out.insert(min(k * step + step // 2, len(out)), doc)
    return out, max(map(len, docs), default=0)


def launch(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), start_new_session=True)


def start_servers(params: Params, model_dir: Path, bundle: Path, work: Path
                  ) -> dict[str, dict]:
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    shutil.rmtree(work / "cache", ignore_errors=True)
    py = sys.executable
    env = {**os.environ, "MLFLOW_TRACKING_URI": params.registry.tracking_uri,
           "PATH": f"{Path(py).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    specs = {
        "tuneline": (["-m", "deploy.serve", "--params", str(params_file), "--host", "127.0.0.1",
                      "--cache-dir", str(work / "cache"), "--log-level", "warning"],
                     "--port", "/readyz", "tuneline"),
        "mlflow": (["-m", "mlflow", "models", "serve", "-m",
                    f"models:/{params.registry.model_name}@champion", "--env-manager", "local",
                    "-h", "127.0.0.1"], "-p", "/ping", "mlflow"),
        "fastapi_torch": (["-m", "bench.serve_peers_app", "--backend", "torch", "--model-dir",
                           str(model_dir)], "--port", "/health", "peer"),
        "fastapi_onnx_fp32": (["-m", "bench.serve_peers_app", "--backend", "onnx",
                               "--model-dir", str(model_dir), "--bundle", str(bundle)],
                              "--port", "/health", "peer"),
    }
    servers = {}
    for name, (args, port_flag, probe, api) in specs.items():
        port = free_port()
        proc = launch([py, *args, port_flag, str(port)], work / f"{name}.log", env)
        servers[name] = {"proc": proc, "url": f"http://127.0.0.1:{port}", "api": api}
        wait_ready(servers[name]["url"] + probe, proc, work / f"{name}.log")
    return servers


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout:g} s")


def stop_servers(servers: dict[str, dict]) -> None:
    for s in servers.values():
        with _quietly():
            os.killpg(s["proc"].pid, signal.SIGTERM)  # its own session: workers included
    for s in servers.values():
        try:
            s["proc"].wait(30)
        except subprocess.TimeoutExpired:
            with _quietly():
                os.killpg(s["proc"].pid, signal.SIGKILL)


class _quietly:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, *_) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu_s(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def tree_memory_mb(pid: int) -> dict[str, float]:
    """Resident MB of the process tree now, and the sum of each process's peak (VmHWM)."""
    rss = peak = 0.0
    for p in tree(pid):
        rss += p.memory_info().rss / 2**20
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1]) / 1024
    return {"rss_mb": rss, "peak_rss_mb": peak}


class ForeignLoad:
    """Cores other processes kept busy during a `with` block: the machine's busy CPU less
    this process, its children (the load client) and the server's whole process tree."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid, self.cores = pid, 0.0

    def _busy_and_own(self) -> tuple[float, float]:
        c = psutil.cpu_times()
        busy = c.user + c.nice + c.system + c.irq + c.softirq + c.steal
        own = sum(sum(resource.getrusage(who)[:2])
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return busy, own + (tree_cpu_s(self.pid) if self.pid else 0.0)

    def __enter__(self) -> ForeignLoad:
        self._t0, (self._busy0, self._own0) = time.perf_counter(), self._busy_and_own()
        return self

    def __exit__(self, *exc) -> None:
        busy, own = self._busy_and_own()
        wall = time.perf_counter() - self._t0
        self.cores = max(0.0, (busy - self._busy0) - (own - self._own0)) / wall


def measure_http(server: dict, texts_file: Path, clients: int, seconds: float) -> dict:
    pid = server["proc"].pid
    with ForeignLoad(pid) as foreign:
        cpu0 = tree_cpu_s(pid)
        load = run_isolated("bench.serve_peers_measure", "load", "--url", server["url"], "--api",
                            server["api"], "--texts", str(texts_file), "--clients",
                            str(clients), "--seconds", str(seconds))
        cpu1 = tree_cpu_s(pid)
    return {**load, "server_cpu_s_per_text": (cpu1 - cpu0) / max(load["texts"], 1),
            "foreign_cores": foreign.cores}


def measure_ceiling(bundle: Path, texts_file: Path, cell: dict, seconds: float) -> dict:
    with ForeignLoad() as foreign:
        out = run_isolated("bench.serve_peers_measure", "ceiling", "--bundle", str(bundle),
                           "--texts", str(texts_file), "--cell", json.dumps(cell),
                           "--seconds", str(seconds))
    return {**out, "cpu_s_per_text": out["cpu_us_per_text"] / 1e6, "foreign_cores": foreign.cores}


def agreement(servers: dict[str, dict], texts: list[str], work: Path) -> dict:
    """Each server's labels on a sample (long documents included) against torch fp32's."""
    sample = [t for t in texts if len(t) > 2000] + [t for t in texts if len(t) <= 2000][:60]
    sample_file = work / "sample.json"
    sample_file.write_text(json.dumps(sample))
    labels = {name: run_isolated("bench.serve_peers_measure", "answers", "--url", s["url"],
                                 "--api", s["api"], "--texts", str(sample_file))
              for name, s in servers.items()}
    ref = labels["fastapi_torch"]["labels"]
    return {"texts": len(sample), "long_texts": sum(len(t) > 2000 for t in sample),
            "failed": {k: v["failed"] for k, v in labels.items()},
            "agreement_with_torch_fp32": {
                k: sum(a == b for a, b in zip(v["labels"], ref, strict=True)) / len(ref)
                for k, v in labels.items()}}


def measure_rate(server: dict, texts_file: Path, rate: float, seconds: float) -> dict:
    with ForeignLoad(server["proc"].pid) as foreign:
        out = run_isolated("bench.serve_peers_measure", "rate", "--url", server["url"], "--api",
                           server["api"], "--texts", str(texts_file), "--rate", str(rate),
                           "--seconds", str(seconds))
    return {**out, "foreign_cores": foreign.cores}


def run_rounds(servers: dict, bundle: Path, texts_file: Path, cell: dict,
               args: argparse.Namespace) -> list[dict]:
    order = [*HTTP, "ceiling"]
    for name in HTTP:  # warm-up: first requests allocate, compile, fill caches
        measure_http(servers[name], texts_file, args.clients, 2)
    rounds = []
    for r in range(args.rounds):
        k = r % len(order)
        row = {}
        for name in order[k:] + order[:k]:
            row[name] = (measure_ceiling(bundle, texts_file, cell, args.round_seconds)
                         if name == "ceiling" else
                         measure_http(servers[name], texts_file, args.clients,
                                      args.round_seconds))
        for name in HTTP[k % len(HTTP):] + HTTP[:k % len(HTTP)]:
            row[name]["at_rate"] = measure_rate(servers[name], texts_file, args.rate,
                                                args.rate_seconds)
        rounds.append(row)
    return rounds


def summarize(rounds: list[dict], memory: dict) -> dict:
    out = {}
    for name in [*HTTP, "ceiling"]:
        rows = [r[name] for r in rounds]

        def med(fn, rows=rows) -> float:
            return statistics.median(fn(x) for x in rows)

        if name == "ceiling":
            out[name] = {"texts_per_s": med(lambda x: x["texts_per_s"]),
                         "cpu_s_per_text": med(lambda x: x["cpu_s_per_text"]),
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in rows)}
            continue
        out[name] = {"texts_per_s": med(lambda x: x["texts_per_s"]),
                     "p50_ms": med(lambda x: x["latency"]["p50_ms"]),
                     "p99_ms": med(lambda x: x["latency"]["p99_ms"]),
                     "failed_requests": sum(x["failed_requests"] for x in rows),
                     "requests": sum(x["requests"] for x in rows),
                     "error_examples": sorted({e for x in rows for e in x["error_examples"]})[:5],
                     "cpu_s_per_text": med(lambda x: x["server_cpu_s_per_text"]),
                     "at_rate": {
                         "p50_ms": med(lambda x: x["at_rate"]["latency"]["p50_ms"]),
                         "p99_ms": med(lambda x: x["at_rate"]["latency"]["p99_ms"]),
                         "failed_requests": sum(x["at_rate"]["failed_requests"] for x in rows),
                         "requests": sum(x["at_rate"]["requests"] for x in rows)},
                     **memory[name]}
    return out


def goals(s: dict, agree: dict) -> dict:
    t = s["tuneline"]
    peers = [n for n in HTTP if n != "tuneline"]
    return {
        "over_mlflow": t["texts_per_s"] >= GOAL_OVER_MLFLOW * s["mlflow"]["texts_per_s"],
        "zero_failed_requests": t["failed_requests"] == 0 and not agree["failed"]["tuneline"],
        "ahead_of_every_peer": all(t["texts_per_s"] > s[n]["texts_per_s"] for n in peers),
        "p99_no_worse_than_any_peer": all(t["p99_ms"] <= s[n]["p99_ms"] for n in peers),
        "p99_at_rate_no_worse_than_any_peer": all(
            t["at_rate"]["p99_ms"] <= s[n]["at_rate"]["p99_ms"] for n in peers),
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*HTTP, "ceiling"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = [summary[n]["texts_per_s"] for n in names]
    ax1.barh([NAMES[n] for n in names], rates, color=["C0", "C1", "C2", "C3", "C7"])
    for y, v in enumerate(rates):
        ax1.text(v, y, f" {v:.0f}", va="center")
    ax1.invert_yaxis()
    ax1.set_xlabel("texts/s at saturation (16 clients, 1 text a request)")
    for n, c in zip(HTTP, ("C0", "C1", "C2", "C3"), strict=True):
        ax2.scatter(summary[n]["texts_per_s"], summary[n]["p99_ms"], color=c, s=60,
                    label=NAMES[n])
        ax2.scatter(summary[n]["texts_per_s"], summary[n]["p50_ms"], color=c, s=30, marker="x")
    ax2.set_xlabel("texts/s")
    ax2.set_ylabel("latency, ms (dot p99, cross p50)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    fig.suptitle("Serving MiniLM-L6 on 2 CPU cores: tuneline and the usual alternatives")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict:
    # Another cache holds another model (a quick check with a small one, say).
    cache, work = (args.cache, args.cache / "peers") if args.cache else (SERVE_WORK, WORK)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    params = bench_params(args, cache, work)
    prepared = prepared_data(params, cache)
    model = trained_model(params, prepared, cache, args.model_dir)
    bundle = exported_bundle(params, Path(model["model_dir"]), prepared, cache)
    version = register(params, bundle, prepared, work)
    texts, longest = bench_texts(prepared, args.long_docs)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    cfg = params.serve
    grid = run_isolated("bench.serve_ceiling_measure", "--bundle", str(bundle), "--texts",
                        str(texts_file), "--max-batch", str(cfg.max_batch), "--seconds", "1",
                        "--repeats", "2")
    cell = {k: grid["ceiling"][k] for k in ("threads", "streams", "batch", "padding", "spinning")}
    servers = start_servers(params, Path(model["model_dir"]), bundle, work)
    try:
        agree = agreement(servers, texts, work)
        rounds = run_rounds(servers, bundle, texts_file, cell, args)
        memory = {n: tree_memory_mb(s["proc"].pid) for n, s in servers.items()}
    finally:
        stop_servers(servers)
    summary = summarize(rounds, memory)
    met = goals(summary, agree)
    t = summary["tuneline"]
    plot(summary, RESULTS_DIR / f"{args.name}.png")
    return {
        "model": {**model, "registered_version": version, "bundle": bundle.name},
        "texts": {"count": len(texts), "long_docs": args.long_docs, "longest_chars": longest,
                  "over_2000_chars": sum(len(x) > 2000 for x in texts)},
        "load": {"clients": args.clients, "texts_per_request": 1, "rounds": args.rounds,
                 "round_seconds": args.round_seconds, "rate": args.rate,
                 "rate_seconds": args.rate_seconds},
        "serve": cfg.model_dump(), "ceiling_cell": cell, "summary": summary,
        "tuneline_over_mlflow": t["texts_per_s"] / summary["mlflow"]["texts_per_s"],
        "tuneline_over_ceiling": t["texts_per_s"] / summary["ceiling"]["texts_per_s"],
        "agreement": agree, "rounds": rounds,
        "goals": {"min_over_mlflow": GOAL_OVER_MLFLOW, "met": met, "all_met": all(met.values())},
        "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_serve_peers "
                   + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=15.0,
                        help="open-loop phase: requests a second (Poisson arrivals)")
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--long-docs", type=int, default=8,
                        help="documents of 5k-20k characters added to the test texts")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--model-dir", type=Path, help="a fine-tuned model folder to use")
    parser.add_argument("--cache", type=Path,
                        help="model/bundle cache (default bench/.cache/serve, bench_serve's)")
    parser.add_argument("--set", action="append", default=[], help="param override")
    parser.add_argument("--name", default="serve_peers", help="result name in bench/results/")
    args = parser.parse_args()
    write_result(args.name, run(args))


if __name__ == "__main__":
    main()
