"""Domain pretraining on the demo corpus: which objective and settings help fine-tuning?

Unlabeled text: data/demo/unlabeled.txt (every stdlib docstring), minus the texts of the
validation and test splits (the pretrain stage drops them: the guard scores on
validation, the comparison on test). Each variant runs the real pretrain stage
(adaptation + the guard's linear probe before and after, on the validation split) in its
own process.

- search: many settings, scored only by the guard's probe (validation; cheap, no
  fine-tuning), to choose what `compare` fine-tunes. Never looks at the test split.
- compare: fine-tuning test accuracy (adamw on the params.yaml defaults, seed 42) with no
  pretraining, masked-LM as before this change, and the search's best masked-LM with head
  warm-up and best SimCSE setting, each adapted for about the same compute; every variant
  against no pretraining with the gate's paired bootstrap interval and McNemar's p.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_pretrain [--parts search,compare]

Variant results and adapted backbones are cached in bench/.cache/pretrain/, keyed on the
settings (not the code): `--fresh` reruns them. Writes bench/results/pretrain.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

from bench.common import BENCH_DIR, PROJECT_ROOT, run_isolated, write_result

MODULE = "bench.pretrain_measure"
CACHE = BENCH_DIR / ".cache" / "pretrain"
DATA = CACHE / "data"
SEEDS = (42,)


def setting(objective: str, steps: int, *, warm: int = 0, batch: int = 16, lr: float = 1e-3,
            encoder_lr: float = 2e-5, warmup: float = 0.1, frozen: bool = False) -> list[str]:
    """Every pretrain key a variant depends on, spelled out: the results (and the cached
    backbones) stay valid when params.yaml's defaults change."""
    return ["pretrain.enabled=true", f"pretrain.objective={objective}",
            f"pretrain.max_steps={steps}", f"pretrain.head_warmup_steps={warm}",
            f"pretrain.batch_size={batch}", f"pretrain.lr={lr}",
            f"pretrain.encoder_lr={encoder_lr}", f"pretrain.warmup_ratio={warmup}",
            f"pretrain.freeze_embeddings={str(frozen).lower()}"]


# Budgets: about the same adaptation compute each, counted in encoder forward+backward
# passes over 16 texts (a masked-LM step ~1.15 of them: the vocabulary projection runs on
# the masked tokens only; a head-only step ~0.4: no backward through the encoder; a SimCSE
# step ~2: every text twice). ~150 each; the measured seconds are in the results.
SEARCH: dict[str, list[str]] = {
    # Masked LM as before this change: every weight from step one at 5e-5, no warm-up.
    "mlm_as_before": setting("mlm", 130, lr=5e-5, encoder_lr=5e-5, warmup=0.0),
    "mlm_warm_lr2e-5": setting("mlm", 95, warm=100, encoder_lr=2e-5),
    "mlm_warm_lr1e-4": setting("mlm", 95, warm=100, encoder_lr=1e-4),
    "simcse_lr3e-5": setting("simcse", 75, encoder_lr=3e-5),
    "simcse_lr1e-4": setting("simcse", 75, encoder_lr=1e-4),
}
# `compare` fine-tunes, besides no pretraining and masked LM as before, the setting of each
# family that the search's probe scored best on validation.
FAMILIES = {"mlm_head_warmup": "mlm_warm_", "simcse": "simcse_"}


def compare_variants(search: dict) -> dict[str, tuple[str, list[str]]]:
    """name -> (search setting it came from, overrides), best probe of each family."""
    out = {"none": ("", ["pretrain.enabled=false"]),
           "mlm_as_before": ("mlm_as_before", SEARCH["mlm_as_before"])}
    for family, prefix in FAMILIES.items():
        tried = [n for n in search if n.startswith(prefix) and n in SEARCH]
        best = max(tried, key=lambda n: (search[n]["probe_after"],
                                         -search[n]["probe_loss_after"]))
        out[family] = (best, SEARCH[best])
    return out


def cached_variant(name: str, overrides: list[str], seeds: tuple[int, ...],
                   fresh: bool) -> dict:
    key = hashlib.sha256(json.dumps([overrides, seeds]).encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{key}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    # One backbone folder per setting: `compare` fine-tunes what `search` adapted (the
    # stage reuses its output when its fingerprint matches).
    backbone = CACHE / "backbones" / hashlib.sha256(json.dumps(overrides).encode()
                                                    ).hexdigest()[:12]
    sets = [a for o in overrides for a in ("--set", o)]
    result = run_isolated(MODULE, "variant", "--root", str(DATA), "--pretrained",
                          str(backbone), *sets, "--seeds", ",".join(map(str, seeds)),
                          *(["--fresh"] if fresh else []), timeout=7200)
    path.write_text(json.dumps(result))
    return result


def summarize_pretrain(result: dict) -> dict:
    pre = result.get("pretrain")
    if pre is None:
        return {}
    keys = ("objective", "steps", "head_warmup_steps", "heldout_loss_before",
            "heldout_loss_after_head_warmup", "heldout_loss_after", "adaptation_seconds",
            "stage_cpu_seconds", "n_train", "dropped_validation_test_texts")
    return {**{k: pre[k] for k in keys if k in pre},
            "probe_before": pre["probe_before"]["accuracy"],
            "probe_after": pre["probe_after"]["accuracy"],
            "probe_loss_before": pre["probe_before"]["loss"],
            "probe_loss_after": pre["probe_after"]["loss"],
            "guard_would_keep": result["guard_would_keep"]}


def bench_search(fresh: bool) -> dict:
    out = {}
    for name, overrides in SEARCH.items():
        out[name] = {"overrides": overrides,
                     **summarize_pretrain(cached_variant(name, overrides, (), fresh))}
    return out


def bench_compare(search: dict, fresh: bool) -> dict:
    from components.config import load_params
    from components.data.files import load_split
    from components.evaluate.stats import paired_accuracy

    params = load_params(PROJECT_ROOT / "params.yaml")
    gold = np.asarray(load_split(DATA / "prepared", "test")[1])
    chosen = compare_variants(search)
    results = {name: cached_variant(name, o, SEEDS, fresh) for name, (_, o) in chosen.items()}
    base = results["none"]["finetune"]
    out = {}
    for name, res in results.items():
        row = {"setting": chosen[name][0], "overrides": chosen[name][1],
               **summarize_pretrain(res), "seeds": {}}
        for seed, ft in res["finetune"].items():
            pred = np.asarray(ft["test_pred"])
            entry = {k: ft[k] for k in ("test_accuracy", "test_macro_f1", "val_accuracy",
                                        "best_step", "wall_seconds")}
            if name != "none":
                entry["vs_none"] = paired_accuracy(gold, pred, np.asarray(base[seed]["test_pred"]),
                                                    params.gate.noise)
            row["seeds"][seed] = entry
        row["mean_test_accuracy"] = float(np.mean([s["test_accuracy"]
                                                   for s in row["seeds"].values()]))
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="search,compare")
    parser.add_argument("--fresh", action="store_true", help="rerun cached variants")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (DATA / "prepared" / "test.jsonl").exists():
        run_isolated(MODULE, "data", "--root", str(DATA))
    result = {}
    previous = BENCH_DIR / "results" / "pretrain.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        result = {k: old[k] for k in ("search", "compare") if k in old and k not in parts}
    if "search" in parts:
        result["search"] = bench_search(args.fresh)
    if "compare" in parts:
        if "search" not in result:
            raise SystemExit("compare picks its settings from the search: run --parts search")
        result["compare"] = bench_compare(result["search"], args.fresh)
    command = ("flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_pretrain "
               f"--parts {args.parts}")
    write_result("pretrain", {"model": "all-MiniLM-L6-v2", "command": command,
                              "unlabeled": "data/demo/unlabeled.txt minus validation/test "
                                           "texts", **result})


if __name__ == "__main__":
    main()
