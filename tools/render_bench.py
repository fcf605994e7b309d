"""Render the benchmark table of docs/benchmarks.md from bench/results/*.json.

    python tools/render_bench.py          # rewrite the table between the page's markers
    python tools/render_bench.py --check  # exit 1 when the committed table differs

One row per results file: the headline numbers (picked by a small extractor per
benchmark), the goal and whether it was met when the file records one, the command, the
machine and its load when recorded, and when it was measured. A file with no extractor
gets a generic row listing its keys, so a new benchmark is never left out. Only the block
between the markers is rewritten; the prose around it stays. A test keeps the committed
block equal to what this renders.

A benchmark may also have a table of its own on another page (`TABLES`), rendered from its
file between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
HEADER = ["| benchmark | result | goal | command | machine | measured (UTC) |",
          "|---|---|---|---|---|---|"]


@dataclass
class Headline:
    """What one extractor reads from a results file."""

    result: list[str]
    goals: list[str] = field(default_factory=list)  # "<goal>: met" or "<goal>: **not met**"
    command: str | None = None  # when the file's `command` is missing or partial


Extractor = Callable[[dict[str, Any]], Headline]
EXTRACTORS: dict[str, Extractor] = {}


def extractor(*names: str) -> Callable[[Extractor], Extractor]:
    """Register `fn` as the extractor of the results files named `names` (file stems)."""
    def register(fn: Extractor) -> Extractor:
        for name in names:
            if name in EXTRACTORS:
                raise ValueError(f"two extractors for {name}")
            EXTRACTORS[name] = fn
        return fn
    return register


TableRenderer = Callable[[dict[str, Any]], list[str]]
TABLES: dict[str, tuple[Path, TableRenderer]] = {}


def table(name: str, page: Path) -> Callable[[TableRenderer], TableRenderer]:
    """Register `fn` as the renderer of results file `name`'s own table on `page`."""
    def register(fn: TableRenderer) -> TableRenderer:
        if name in TABLES:
            raise ValueError(f"two tables for {name}")
        TABLES[name] = (page, fn)
        return fn
    return register


# ---------------------------------------------------------------------------- numbers


def met(goal: str, ok: bool) -> str:
    return f"{goal}: {'met' if ok else '**not met**'}"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def pt(fraction: float) -> str:
    return f"{100 * fraction:+.1f} pt"


def interval(ci: list[float], confidence: float | None = None, scale: float = 100) -> str:
    level = f"{100 * confidence:.0f}% " if confidence else ""
    return f"{level}interval {scale * ci[0]:+.1f} to {scale * ci[1]:+.1f} pt"


def paired(cmp: dict[str, Any]) -> str:
    """A paired difference as the gate reports it: delta, interval, McNemar's p."""
    return (f"{pt(cmp['delta'])} ({interval(cmp['ci'], cmp.get('confidence'))}, "
            f"McNemar p {cmp['mcnemar_p']:.2f})")


# ---------------------------------------------------------------------------- extractors


@extractor("prepare")
def prepare(d: dict[str, Any]) -> Headline:
    lines = []
    for s in d["sizes"]:
        runs = f"median of {len(s['seconds'])} runs" if len(s["seconds"]) > 1 else "1 run"
        cpu = f", {s['cpu_s']:.1f} CPU-s" if "cpu_s" in s else ""
        lines.append(
            f"{s['rows']:,} CSV rows ({s['input_mb']:,.0f} MB): {s['median_s']:.1f} s "
            f"(ingest {s['ingest_s']:.1f} + prepare {s['prepare_s']:.1f}, {runs}{cpu}), "
            f"{s['rows_per_s']:,.0f} rows/s, peak RSS {s['peak_rss_mb']:,.0f} MB; "
            f"{s['rows_ok']:,} rows ok, {s['near_duplicate_rows']:,} with a near-duplicate")
    if d["growth_100k_to_1m"] is not None:
        lines.append(f"time 100k -> 1M rows: x{d['growth_100k_to_1m']:.2f}")
    goals = d["goals"]
    return Headline(lines, [
        met(f"1M rows <= {d['goal_s']:g} s", goals["seconds_1m"]),
        met(f"peak RSS <= {d['goal_rss_mb']:,.0f} MB", goals["peak_rss_1m"]),
        met(f"time 100k -> 1M <= x{d['goal_growth']:g}", goals["growth_100k_to_1m"])])


@extractor("pipeline")
def pipeline(d: dict[str, Any]) -> Headline:
    clone, orch = d["fresh_clone"], d["orchestration"]
    return Headline(
        [f"fresh clone to `{clone['status']}`: `make install` {clone['install_s']:.0f} s + "
         f"`tuneline run` {clone['run_s']:.0f} s = {clone['total_s']:.0f} s",
         f"orchestration overhead in the flow {orch['overhead_s']:.2f} s "
         f"({orch['overhead_pct']:.2f}% of {orch['flow_s']:.0f} s); Prefect's temporary "
         f"server starting {orch['startup_s']:.1f} s",
         f"test accuracy {d['model']['test']['accuracy']:.3f} ({d['model']['steps']} steps)"],
        [met(f"clone to promoted <= {clone['goal_s']:g} s", clone["goal_met"]),
         met(f"overhead <= {orch['goal']['max_s']:g} s and <= {orch['goal']['max_pct']:g}%",
             orch["goal_met"])])


@extractor("train")
def train(d: dict[str, Any]) -> Headline:
    steps, acc, mlm = d["steps"], d["accuracy"], d["mlm"]
    fwd = steps["forward"]
    timing = ", ".join(f"{mode} {s['median_ms']:.0f} ms / {s['peak_rss_mb']:.0f} MB"
                       for mode, s in steps.items())
    tfidf, adamw = acc["tfidf_logreg"], acc["adamw_full"]
    return Headline(
        [f"median step, peak RSS (batch {fwd['batch']}, seq {fwd['seq']}, {fwd['threads']} "
         f"threads): {timing}",
         f"test accuracy, AdamW on the {acc['params']} {adamw['test_accuracy']:.3f}"
         f" vs TF-IDF + logistic regression {tfidf['test_accuracy']:.3f}: "
         f"{paired(acc['paired_vs_tfidf'])}; TF-IDF on the first tokens only "
         f"{tfidf['first_tokens_only']['test_accuracy']:.3f}",
         f"MLM held-out loss {mlm['heldout_loss_before']:.2f} -> "
         f"{mlm['heldout_loss_after']:.2f} ({mlm['steps']} steps)"],
        [met(k.replace("_", " "), ok) for k, ok in d["goals"].items()],
        command=f"accuracy part: `{acc['command']}`; other parts: `python -m "
                "bench.bench_train` (arguments not recorded)")


@extractor("zo")
def zo(d: dict[str, Any]) -> Headline:
    r, speed = d["ratios"], d["speed"]
    fwd = speed["forward"]["per_process_median_ms"]
    return Headline(
        [f"MeZO peak RSS / inference {speed['mezo']['phase_peak_rss_mb']:.0f} / "
         f"{speed['forward']['phase_peak_rss_mb']:.0f} MB = "
         f"{r['mezo_peak_rss_over_inference']:.3f}",
         f"MeZO step / forward: separate processes {r['mezo_step_over_forward']:.2f} "
         f"(forward medians {min(fwd):.0f}-{max(fwd):.0f} ms a process), alternating in one "
         f"process {r['mezo_step_over_forward_interleaved']:.2f}"],
        [met(f"step <= {r['goal_step_ratio']:g}x forward (both ways)", r["step_ratio_met"]),
         met(f"RSS <= {r['goal_rss_ratio']:g}x inference", r["rss_ratio_met"])])


@extractor("zo_budget", "zo_search")
def zo_budget(d: dict[str, Any]) -> Headline:
    probe, runs = d["probe"], d["runs"]
    budgets = sorted({r["budget_cpu_seconds"] for r in runs})
    spent = "-".join(dict.fromkeys(f"{b:g}" for b in (budgets[0], budgets[-1])))
    lines = [f"{len(runs)} runs, each from the same linear-probe start, {spent} CPU-s of "
             f"training steps a run; probe validation {probe['validation_accuracy']:.3f}, test "
             f"{probe['test_accuracy']:.3f}"]
    scored = [r for r in runs if "test_vs_probe" in r]
    if scored:
        lines.append("test vs the probe: " + "; ".join(
            f"{r['name']} {paired(r['test_vs_probe'])}"
            for r in sorted(scored, key=lambda r: -r["test_vs_probe"]["delta"])))
    else:
        best = sorted(runs, key=lambda r: -r["val_accuracy"])[:4]
        lines.append("best validation: " + ", ".join(
            f"{r['name']} {r['val_accuracy']:.3f}" for r in best))
    return Headline(lines, command=f"`python -m bench.bench_zo_budget {d['phase']}` "
                                   "(arguments not recorded)")


@extractor("export")
def export(d: dict[str, Any]) -> Headline:
    size, lat, g, ok = d["size_mb"], d["latency"], d["goals"], d["goals_met"]
    return Headline(
        [f"int8 / fp32 size {size['int8']:.1f} / {size['fp32']:.1f} MB = "
         f"{d['size_ratio']:.2f}x",
         f"agreement on {d['test_rows']} test rows {100 * d['agreement']:.1f}% "
         f"({d['int8_disagreements']} rows differ; {100 * d['agreement_b1']:.1f}% one text at "
         "a time)",
         f"accuracy int8 {d['accuracy_int8']:.3f} vs fp32 {d['accuracy_fp32']:.3f} "
         f"(drop {d['accuracy_drop_pt']:+.1f} pt)",
         f"int8 batch 32 {lat['int8_b32']['texts_per_s']:.0f} texts/s = "
         f"{d['int8_speedup_b32']:.2f}x fp32"],
        [met(f"size <= {g['max_size_ratio']:g}x", ok["size_ratio"]),
         met(f"agreement >= {100 * g['min_agreement']:g}%", ok["agreement"]),
         met(f"accuracy drop <= {g['max_accuracy_drop_pt']:g} pt", ok["accuracy_drop"])])


INT8_NAMES = {"ort_fp32": "ONNX Runtime fp32 (reference)",
              "ort_dynamic": "ONNX Runtime dynamic int8 (shipped)",
              "ort_static": "ONNX Runtime static QDQ int8",
              "openvino_fp32": "OpenVINO fp32", "openvino_int8": "OpenVINO NNCF int8"}


@table("export", ROOT / "docs" / "how-to" / "serving.md")
def int8_variants_table(d: dict[str, Any]) -> list[str]:
    v = d["int8_variants"]["variants"]
    rows = ["| graph | texts/s batch 32 | x shipped | batch-1 ms | x shipped | accuracy | "
            "agreement with fp32 | passes the gate's int8 rules |",
            "|---|---|---|---|---|---|---|---|"]
    for name in INT8_NAMES:
        if name not in v:
            continue
        r = v[name]
        judged = "accuracy" in r
        rows.append("| " + " | ".join([
            INT8_NAMES[name], f"{r['b32_texts_per_s']:.0f}",
            f"{r['b32_speed_vs_ort_dynamic']:.2f}x", f"{r['b1_median_ms']:.1f}",
            f"{r['b1_speed_vs_ort_dynamic']:.2f}x",
            f"{r['accuracy']:.3f}" if judged else f"{d['accuracy_fp32']:.3f}",
            f"{r['agreement']:.1%}" if judged else "-",
            ("yes" if r["passes_gate_int8_rules"] else "no") if judged else "-"]) + " |")
    return [*rows, "", f"{d['test_rows']} demo test rows; medians of alternating rounds, "
            f"{d['machine']['cpus']} cores, `model.num_threads` threads; measured "
            f"{d['measured_at']} by `{d['command'].strip()}`."]


@extractor("compress")
def compress(d: dict[str, Any]) -> Headline:
    lines = [f"{d['folds']}-fold cross-validation, {d['rows']} demo texts each scored once "
             "(int8 ONNX)"]
    for name, m in d["models"].items():
        extra = f", {'; '.join(m['settings'])}" if m.get("settings") else ""
        line = f"{name} (layers {m['layers']}{extra}): accuracy {m['accuracy_int8']:.3f}"
        if name != "teacher":
            line += f", vs teacher {paired(m['vs_teacher'])}"
        lines.append(line + f", {m['texts_per_s_b32']:.0f} texts/s = "
                     f"{m['speedup_vs_teacher']:.2f}x, batch 1 {m['b1_p50_ms']:.1f} ms, "
                     f"{m['size_mb_int8']:.1f} MB int8")
    goal = d["goal"]
    return Headline(lines, [met(f"a student >= {goal['min_speedup']:g}x within "
                                f"{goal['max_accuracy_drop_pt']:g} pt (interval above "
                                f"{goal['min_interval_lower_pt']:g} pt)", d["goal_met"])])


@extractor("dist")
def dist(d: dict[str, Any]) -> Headline:
    def sent(n: float) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:.0f} bytes"

    return Headline([
        f"{name}: {sent(s['bytes_sent_per_step_per_rank'])} sent a step and rank; "
        f"examples/s 2 ranks / 1 rank {s['throughput_ratio_2_vs_1']:.2f}"
        for name, s in d["strategies"].items()]
        + [f"{d['setup']['backend']}, {d['setup']['threads_per_rank']} thread a rank, "
           f"per-rank batch {d['setup']['per_rank_batch']}, {d['setup']['rounds']} rounds"])


@extractor("ner")
def ner(d: dict[str, Any]) -> Headline:
    n = d["sentences"][d["split"]]
    return Headline([f"{d['split']} entity F1 ({n} sentences): " + ", ".join(
        f"{name.replace('_', ' ')} {r['entity_f1']:.3f}" for name, r in d["results"].items())])


@extractor("pretrain")
def pretrain(d: dict[str, Any]) -> Headline:
    lines = []
    for name, c in d["compare"].items():
        line = f"{name}: test {c['mean_test_accuracy']:.3f}"
        vs = [s["vs_none"] for s in c["seeds"].values() if "vs_none" in s]
        if vs:
            line += " vs none " + "; ".join(paired(v) for v in vs)
        lines.append(line)
    kept = sum(bool(c.get("guard_would_keep")) for c in d["compare"].values())
    lines.append(f"the pretrain guard would keep {kept} of "
                 f"{sum('guard_would_keep' in c for c in d['compare'].values())}")
    return Headline(lines)


@extractor("profile_ort")
def profile_ort(d: dict[str, Any]) -> Headline:
    top = sorted(d["op_share"].items(), key=lambda kv: -kv[1])[:3]
    return Headline(
        [f"{d['kernel_us_per_padded_token']:g} us of kernel time a padded token "
         f"({d['model']}, batch {d['batch']}, {d['threads']} thread)",
         ", ".join(f"{op} {100 * share:.0f}%" for op, share in top)])


SERVE_GOALS = {"zero_failed_requests": "no failed request",
               "champion_switched_under_load": "champion moved under load",
               "b1_p50_within_2x_raw_ort": "batch-1 p50 <= {max_b1_ratio:g}x raw ORT",
               "throughput_texts_per_s": ">= {min_texts_per_s:g} texts/s",
               "http_over_ceiling": "HTTP / ceiling >= {min_http_over_ceiling:g}"}


@extractor("serve", "serve_c64", "serve_ceiling", "serve_ceiling_quiet")
def serve(d: dict[str, Any]) -> Headline:
    load, raw, g = d["load"], d["raw_ort_int8"], d["goals"]
    lines = []
    if "http_over_ceiling" in d:
        sat = d["saturation"]  # the median is over the quiet rounds, or all when none was
        rounds = (f"{sat['quiet_rounds']} quiet rounds" if sat["quiet_rounds"]
                  else f"all {len(sat['rounds'])} rounds, none quiet")
        lines.append(f"HTTP / in-process ceiling {d['http_over_ceiling']:.2f} (HTTP "
                     f"{d['http_texts_per_s_at_saturation']:.0f} texts/s over "
                     f"{d['ort_ceiling_texts_per_s']:.0f}, median of {rounds}); CPU a "
                     f"text, ceiling / server "
                     f"{d['cpu_ratio']:.2f}; grid's best without the global length sort / "
                     f"best {d['grid_best_without_global_sort_over_best']:.2f}")
    lines += [f"{load['clients']} clients, {load['seconds']:.0f} s, champion moved mid-run: "
              f"{load['texts_per_s']:.0f} texts/s, p99 {load['latency']['p99_ms']:.0f} ms, "
              f"{load['failed_requests']} failed of {load['requests']:,}, mean batch "
              f"{d['server']['mean_batch_texts']:.1f} texts",
              f"HTTP batch-1 p50 / raw ORT {d['http_b1_p50_over_raw_session_run']:.2f}; raw "
              f"ORT batch 32 in this run {raw['before']['b32_texts_per_s']:.0f} before, "
              f"{raw['after']['b32_texts_per_s']:.0f} after (texts/s)"]
    goals = [met(SERVE_GOALS.get(k, k.replace("_", " ")).format(**g), ok)
             for k, ok in g["met"].items()]
    return Headline(lines, goals)


PEER_NAMES = {"tuneline": "`tuneline serve` (int8)",
              "mlflow": "`mlflow models serve`, same version",
              "fastapi_torch": "FastAPI + transformers `pipeline` (torch fp32)",
              "fastapi_onnx_fp32": "FastAPI + ONNX Runtime (fp32 graph)",
              "ceiling": "in-process ORT int8, best batch/threads (no HTTP)"}
PEER_GOALS = {"over_mlflow": "tuneline >= {min_over_mlflow:g}x mlflow serve",
              "zero_failed_requests": "tuneline: 0 failed requests",
              "ahead_of_every_peer": "tuneline ahead of every peer in texts/s",
              "p99_no_worse_than_any_peer": "tuneline p99 <= every peer's",
              "p99_at_rate_no_worse_than_any_peer":
                  "tuneline p99 at the fixed request rate <= every peer's"}


@extractor("serve_peers")
def serve_peers(d: dict[str, Any]) -> Headline:
    s = d["summary"]
    rates = ", ".join(f"{k} {v['texts_per_s']:.0f}" for k, v in s.items())
    return Headline([f"texts/s at saturation ({d['load']['clients']} clients, 1 text a "
                     f"request, median of {d['load']['rounds']} alternating rounds): {rates}",
                     f"tuneline / mlflow serve {d['tuneline_over_mlflow']:.2f}x, tuneline / "
                     f"in-process ceiling {d['tuneline_over_ceiling']:.2f}; table in "
                     "docs/how-to/serving.md"],
                    [met(PEER_GOALS[k].format(**d["goals"]), ok)
                     for k, ok in d["goals"]["met"].items()])


@table("serve_peers", ROOT / "docs" / "how-to" / "serving.md")
def serve_peers_table(d: dict[str, Any]) -> list[str]:
    s, t = d["summary"], d["texts"]
    agree = d["agreement"]["agreement_with_torch_fp32"]
    rate = d["load"].get("rate")
    rows = ["| server | texts/s | p50 ms | p99 ms | failed | "
            + (f"p50 / p99 ms at {rate:g} req/s | " if rate else "")
            + "CPU-s a text | RSS MB (peak) | labels as torch fp32 |",
            "|---|---|---|---|---|---|---|---|" + "---|" * bool(rate)]
    for name, r in s.items():
        http = "p50_ms" in r
        rss = (f"{r['rss_mb']:.0f} ({r['peak_rss_mb']:.0f})" if http
               else f"({r['peak_rss_mb']:.0f})")
        rows.append("| " + " | ".join([
            PEER_NAMES.get(name, name), f"{r['texts_per_s']:.0f}",
            f"{r['p50_ms']:.0f}" if http else "-", f"{r['p99_ms']:.0f}" if http else "-",
            f"{r['failed_requests']} of {r['requests']:,}" if http else "-",
            *([f"{r['at_rate']['p50_ms']:.0f} / {r['at_rate']['p99_ms']:.0f}"
               + (f" ({r['at_rate']['failed_requests']} failed)"
                  * bool(r['at_rate']['failed_requests']))
               if http else "-"] if rate else []),
            f"{r['cpu_s_per_text'] * 1e3:.1f} ms", rss,
            f"{agree[name]:.0%}" if name in agree else "-"]) + " |")
    return [*rows, "", f"{t['count']} texts ({t['over_2000_chars']} over 2,000 characters, the "
            f"longest {t['longest_chars']:,}), {d['load']['clients']} closed-loop clients, one "
            f"text a request, median of {d['load']['rounds']} rounds of "
            f"{d['load']['round_seconds']:g} s"
            + (f"; then {rate:g} requests a second, Poisson arrivals, for "
               f"{d['load']['rate_seconds']:g} s a round, latency from scheduled arrival"
               if rate else "") + f"; measured {d['measured_at']} by "
            f"`{d['command']}`; 1-min load average {d['loadavg_1m']['before']:.2f} before, "
            f"{d['loadavg_1m']['after']:.2f} after."]


@extractor("sweep")
def sweep(d: dict[str, Any]) -> Headline:
    b, cmp, chain = d["budget"], d["comparison"], d["winner_chain"]
    trials = ", ".join(f"{t['trial']} {t['score']:.3f}" + (" (pruned)" * (t["state"] == "pruned"))
                       for t in d["trials"])
    return Headline(
        [f"{len(d['trials'])} trials of {b['n_trials_cap']} planned ({b['workers']} workers x "
         f"{b['threads_per_worker']} thread); trials used {b['trials_cpu_seconds_used']:,.1f} "
         f"CPU-s against a {b['cpu_seconds']:,.0f} CPU-s budget; stopped: {d['stopped']}",
         f"validation score by trial: {trials}; best trial {d['best_trial']}"
         + (" (the params.yaml defaults)" * cmp["winner_is_defaults"]),
         f"winner test accuracy {cmp['winner']['test_accuracy']:.3f}, defaults "
         f"{cmp['defaults']['test_accuracy']:.3f}; winner chain `{chain['status']}`; "
         f"passes the gate vs the defaults: {yes(d['decision']['winner_passes_gate_vs_defaults'])}"
         f", holds on test: {yes(d['decision']['winner_holds_on_test'])}"])


@extractor("overload")
def overload(d: dict[str, Any]) -> Headline:
    b, u, g = d["bounded"], d["unbounded"], d["goals"]
    refused = b["overload_refused_latency"]
    return Headline(
        [f"{d['overload_factor']:g}x saturation ({d['saturation_texts_per_s']:.0f} texts/s) "
         f"offered open-loop: with back-pressure {b['overload_share_503']:.0%} refused with "
         f"503 in p99 {refused['p99_ms']:.0f} ms, goodput "
         f"{b['overload_goodput_over_saturation']:.2f}x saturation, "
         f"{b['overload_share_client_timeout']:.0%} client timeouts, queue peak "
         f"{b['queued_texts_peak']:.0f} texts, recovered in {b['recovered_after_s']} s, RSS "
         f"+{b['rss_growth_mb']:.0f} MB",
         f"without it: {u['overload_share_client_timeout']:.0%} client timeouts, goodput "
         f"{u['overload_goodput_over_saturation']:.2f}x, queue peak "
         f"{u['queued_texts_peak']:,.0f} texts"],
        [met(name.replace("_", " "), ok) for name, ok in g["met"].items()])


@extractor("cv_demo", "cv_long")
def cross_validated(d: dict[str, Any]) -> Headline:
    base = d["baseline"]
    lines = [f"{d['rows']:,} texts, {d['folds']}-fold, seeds {d['seeds']}: every text "
             "scored once per setting"]
    for name, r in d["results"].items():
        line = (f"{name}: accuracy {r['accuracy']:.3f}, max_length {r['mean_max_length']:.0f} "
                f"({r['mean_truncated_share']:.0%} truncated), {r['mean_steps']:.0f} steps")
        if f"vs_{base}" in r:
            line += f"; vs {base} {paired(r[f'vs_{base}']['pooled'])}"
        lines.append(line)
    return Headline(lines)


def generic(d: dict[str, Any]) -> Headline:
    goals = [met("goal", d["goal_met"])] if isinstance(d.get("goal_met"), bool) else []
    keys = sorted(k for k in d if k not in ("benchmark", "command", "machine", "measured_at"))
    return Headline([f"no extractor yet; keys: {', '.join(keys)}"], goals)


# ---------------------------------------------------------------------------- rows


def machine_state(d: dict[str, Any]) -> str:
    m = d.get("machine")
    parts = [f"{m['cpus']} CPUs {m['machine']}, Python {m['python']}, torch {m['torch']} "
             f"({m['torch_threads']} threads)"] if m else ["not recorded"]
    if "loadavg_1m" in d:
        load = d["loadavg_1m"]
        parts.append(f"1-min load average {load['before']:.2f} before, {load['after']:.2f} after")
    sat = d.get("saturation")
    if sat and "quiet_rounds" in sat:
        parts.append(f"{sat['quiet_rounds']} of {len(sat['rounds'])} rounds quiet (other "
                     f"processes <= {sat['max_foreign_cores']:g} cores)")
    if d.get("note"):
        parts.append(d["note"])
    return "; ".join(parts)


def default_command(name: str) -> str:
    for module in (f"bench_{name}", name):
        if (BENCH / f"{module}.py").exists():
            return f"`python -m bench.{module}` (arguments not recorded)"
    return "not recorded"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_row(name: str, data: dict[str, Any]) -> str:
    extract = EXTRACTORS.get(name, generic)
    try:
        head = extract(data)
    except (KeyError, IndexError, TypeError) as err:  # the benchmark now writes another shape
        raise ValueError(f"{name}.json does not fit extractor {extract.__name__}: {err!r}") from err
    command = f"`{data['command'].strip()}`" if data.get("command") else None
    command = head.command or command or default_command(name)
    measured = data.get("measured_at", "not recorded").replace("T", " ").removesuffix("Z")
    return "| " + " | ".join(cell(c) for c in (
        f"`{name}`", "<br>".join(head.result), "<br>".join(head.goals) or "none recorded",
        command, machine_state(data), measured)) + " |"


def render_block(results: Path = RESULTS) -> str:
    rows = [render_row(p.stem, json.loads(p.read_text()))
            for p in sorted(results.glob("*.json"))]
    return "\n".join([BEGIN, "", *HEADER, *rows, "", END])


def splice(page: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """`page` with the text between the markers (inclusive) replaced by `block`."""
    start, stop = page.find(begin), page.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the page lacks the {begin} ... {end} markers")
    return page[:start] + block + page[stop + len(end):]


def table_markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def render_table(name: str, results: Path = RESULTS) -> str:
    """The block of results file `name`'s own table, markers included."""
    begin, end = table_markers(name)
    path = results / f"{name}.json"
    body = (TABLES[name][1](json.loads(path.read_text())) if path.exists()
            else [f"Not measured yet: run `python -m bench.bench_{name}`."])
    return "\n".join([begin, "", *body, "", end])


def rendered_pages() -> dict[Path, str]:
    """Every page that holds a rendered table, as it should read."""
    pages = {PAGE: splice(PAGE.read_text(), render_block())}
    for name, (page, _) in TABLES.items():
        text = pages.get(page) or page.read_text()
        pages[page] = splice(text, render_table(name), *table_markers(name))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the committed table differs from the rendering")
    args = parser.parse_args(argv)
    stale = 0
    for page, text in rendered_pages().items():
        if text == page.read_text():
            continue
        if args.check:
            print(f"stale table in {page}: run python tools/render_bench.py", file=sys.stderr)
            stale = 1
        else:
            page.write_text(text)
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
