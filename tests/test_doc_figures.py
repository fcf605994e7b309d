"""Benchmark figures quoted in the prose of README.md and docs/ equal their results JSON.

The table of docs/benchmarks.md is rendered from bench/results/*.json (tests/test_bench_tables.py);
the figures pages quote in sentences and small tables are checked here: each entry is the
text a page must contain, formatted from the JSON the way the page writes it. When a
benchmark is re-run, this fails until the page says what the new file says.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@cache
def result(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def pt(x: float) -> str:
    return f"{100 * x:+.1f}"


def overload() -> list[str]:
    d = result("overload")
    b = d["bounded"]
    assert b["overload_share_client_timeout"] == 0  # the README says "no client timeouts"
    return [f"At {d['overload_factor']:g}x saturation the server answered 503 in "
            f"{b['overload_refused_latency']['p99_ms']:.0f} ms (p99) with no client timeouts",
            f"recovered {b['recovered_after_s']} s after the load dropped"]


def serving() -> list[str]:
    d = result("overload")
    b, u = d["bounded"], d["unbounded"]
    ok, refused = b["overload_ok_latency"], b["overload_refused_latency"]
    return [
        f"Saturation was {d['saturation_texts_per_s']:.0f} texts/s with "
        f"{d['saturation']['clients']} closed-loop clients, so the {d['overload_factor']:g}x "
        f"phase offered {d['offered_texts_per_s']['overload']:,.0f} texts/s",
        f"{pct(b['overload_share_200'])} 200 (p50 {ok['p50_ms'] / 1000:.2f} s, p99 "
        f"{ok['p99_ms'] / 1000:.2f} s), {pct(b['overload_share_503'])} 503 with `Retry-After: "
        f"{b['retry_after'][0]}` (p50 {refused['p50_ms']:.1f} ms, p99 {refused['p99_ms']:.0f} ms)",
        f"{pct(u['overload_share_200'])} 200 (p99 {u['overload_ok_latency']['p99_ms'] / 1000:.2f} "
        f"s), {pct(u['overload_share_client_timeout'])} client timeouts",
        f"| texts served, per second | {b['overload_goodput_texts_per_s']:.0f} (",
        f"| {u['overload_goodput_texts_per_s']:.0f} (its time went",
        f"| {b['queued_texts_end_of_overload']:,.0f} texts (`max_queued_texts`) | "
        f"{u['queued_texts_end_of_overload']:,.0f} texts, still "
        f"{u['queued_texts_end_of_recovery']:,.0f} twenty seconds later |",
        f"{b['rss_light_mb']:.0f} MB at light load, {b['rss_peak_mb']:.0f} MB peak, "
        f"+{b['rss_growth_second_half_mb']:.0f} MB from the first half",
        f"{u['rss_light_mb']:.0f} MB, {u['rss_peak_mb']:.0f} MB peak, "
        f"+{u['rss_growth_second_half_mb']:.0f} MB in the second half alone",
        f"Another job kept about {b['foreign_cores']:.1f} of the 2 cores busy",
    ]


def fine_tuning() -> list[str]:
    d = result("cv_demo")["results"]
    auto, fixed = d["defaults"], d["fixed64"]
    vs = auto["vs_fixed64"]["pooled"]
    return [
        f"on the demo corpus {auto['mean_max_length']:.0f}\ntokens where the old fixed 64 cut "
        f"{pct(fixed['mean_truncated_share'])} of the texts",
        f"every one of its {vs['n']:,} texts scored",
        f"the `auto` defaults {auto['accuracy']:.3f} against the earlier fixed 64 tokens and "
        f"{fixed['mean_steps']:.0f} steps {fixed['accuracy']:.3f}, a difference of "
        f"{pt(vs['delta'])} pt (95% paired interval {pt(vs['ci'][0])} to {pt(vs['ci'][1])} pt, "
        f"McNemar p {vs['mcnemar_p']:.2f})",
    ]


def distributed() -> list[str]:
    s = result("dist")["strategies"]
    adamw, mezo, es = s["adamw"], s["mezo"], s["es"]

    def longer(x: dict) -> str:
        return pct(x["seconds_per_step_2_ranks"] / x["seconds_per_step_1_rank"] - 1)

    return [
        f"{adamw['bytes_sent_per_step_per_rank']:,.0f} (the fp32 gradients) | "
        f"{adamw['throughput_ratio_2_vs_1']:.2f} |",
        f"| {mezo['bytes_sent_per_step_per_rank']:.0f} (2 losses + the embedding-row digests) | "
        f"{mezo['throughput_ratio_2_vs_1']:.2f} |",
        f"| {es['bytes_sent_per_step_per_rank']:.0f} (the fitness values) | "
        f"{es['throughput_ratio_2_vs_1']:.2f} |",
        f"a MeZO step takes {longer(mezo)} longer with 2 ranks "
        f"({mezo['seconds_per_step_1_rank']:.2f} -> {mezo['seconds_per_step_2_ranks']:.2f} s)",
        f"a DDP step {longer(adamw)} longer ({adamw['seconds_per_step_1_rank']:.2f} -> "
        f"{adamw['seconds_per_step_2_ranks']:.2f} s)",
        f"all-reduces {adamw['bytes_sent_per_step_per_rank'] / 1e6:.0f} MB through gloo",
    ]


def compress() -> list[str]:
    d = result("compress")
    m3, m2 = d["models"]["L3"], d["models"]["L2"]
    lo, hi = m3["vs_teacher_ci_pt"]
    return [f"cross-validated over the {d['rows']} demo texts, `bench_compress`: the 3-layer "
            f"int8 student serves {m3['speedup_vs_teacher']:.2f}x the teacher's texts/s and "
            f"scores {-m3['vs_teacher_pt']:.1f} pt lower, interval {lo:.1f} to {hi:.1f} pt; the "
            f"2-layer one {m2['speedup_vs_teacher']:.2f}x and {-m2['vs_teacher_pt']:.1f} pt lower"]


def token_classification() -> list[str]:
    d = result("ner")
    rows = []
    for key, name in (("dictionary", "dictionary"),
                      ("logistic_regression", "logistic regression per word")):
        r = d["results"][key]
        rows.append(f"| {name} | {r['entity_f1']:.3f} | {r['entity_precision']:.3f} | "
                    f"{r['entity_recall']:.3f} | {r['accuracy']:.3f} |")
    r = d["results"]["minilm_finetuned"]
    rows.append(f"| MiniLM fine-tuned (AdamW, {r['steps']} steps, {r['train_seconds']:.0f} s) | "
                f"**{r['entity_f1']:.3f}** | {r['entity_precision']:.3f} | "
                f"{r['entity_recall']:.3f} | {r['accuracy']:.3f} |")
    support = d["results"]["minilm_finetuned"]["support"]
    rows.append(f"On the {r['n']} test sentences ({sum(support.values())} entities, "
                f"{support['CODE']} of\nthem `CODE`)")
    return rows


def signed(x: float) -> str:
    """Points with a sign, as the research tables write them (no sign on zero)."""
    return f"{100 * x:+.1f}" if round(100 * x, 1) else "0.0"


ZO_RUNS = {"adamw": "AdamW, exact gradients", "mezo-bitfit-lr3e-4": "MeZO `bitfit`, lr 3e-4",
           "cem16-top1-s3e-4": "CEM, last layer, 16 samples, sigma 3e-4",
           "fzoo16-top1-lr3e-3": "FZOO, 16 directions, last layer, lr 3e-3",
           "mezo-all-lr1e-5": "MeZO `all`, lr 1e-5"}


def zeroth_order_budget() -> list[str]:
    d = result("zo_budget")
    rows = [f"against the probe start's {d['probe']['test_accuracy']:.3f}"]
    for run in d["runs"]:
        vs = run["test_vs_probe"]
        rows.append(f"| {ZO_RUNS[run['name']]} ({run['steps_done']}, {run['selected_step']}) | "
                    f"{run['val_accuracy']:.3f} | {run['test_accuracy']:.3f} | "
                    f"{signed(vs['delta'])} pt ({signed(vs['ci'][0])} to {signed(vs['ci'][1])}),"
                    f" p {vs['mcnemar_p']:.2f} |")
    return rows


PRETRAIN_ROWS = [  # (label, search setting, compared setting or None)
    ("masked LM as before: 130 steps, every weight at 5e-5", "mlm_as_before", "mlm_as_before"),
    ("masked LM, 100-step head warm-up, then 95 steps, encoder at 2e-5", "mlm_warm_lr2e-5",
     "mlm_head_warmup"),
    ("masked LM, warm-up, encoder at 1e-4", "mlm_warm_lr1e-4", None),
    ("SimCSE, 75 steps, encoder at 3e-5", "simcse_lr3e-5", "simcse"),
    ("SimCSE, encoder at 1e-4", "simcse_lr1e-4", None)]


def domain_pretraining() -> list[str]:
    d = result("pretrain")
    none = d["compare"]["none"]
    rows = [f"| no pretraining | — | {d['compare']['simcse']['probe_before']:.3f} | "
            f"**{none['mean_test_accuracy']:.3f}** | — |"]
    for label, searched, compared in PRETRAIN_ROWS:
        run = d["search"][searched]
        row = f"| {label} | {run['adaptation_seconds']:.0f} s | {run['probe_after']:.3f} | "
        if compared:
            c = d["compare"][compared]
            vs = c["seeds"]["42"]["vs_none"]
            row += (f"{c['mean_test_accuracy']:.3f} | {signed(vs['delta'])} pt "
                    f"({signed(vs['ci'][0])} to {signed(vs['ci'][1])})").replace("-", "−")
        rows.append(row)
    return rows


PAGES = {"README.md": overload, "docs/how-to/serving.md": serving,
         "docs/concepts/fine-tuning.md": fine_tuning,
         "docs/how-to/distributed-training.md": distributed,
         "docs/concepts/pipeline.md": compress,
         "docs/how-to/token-classification.md": token_classification,
         "docs/research/zeroth-order-budget.md": zeroth_order_budget,
         "docs/research/domain-pretraining.md": domain_pretraining}


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_prose_figures_equal_their_json(page):
    text = _flat((ROOT / page).read_text())
    missing = [fig for fig in PAGES[page]() if _flat(fig) not in text]
    assert not missing, f"{page} does not say what bench/results says: {missing}"
