"""Where ONNX Runtime spends its time in an exported bundle: the share of kernel time per
operator type, from ONNX Runtime's own profiler, on the demo test texts.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.profile_ort BUNDLE_DIR \
        [--model model.int8.onnx] [--batch 16] [--threads 1] [--runs 20]

Batches are consecutive test texts, each padded to its longest text (as in `predict`).
Writes bench/results/profile_ort.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from bench.common import PROJECT_ROOT, write_result
from components.config import load_params
from components.data.files import load_split
from components.release.predictor import INT8_MODEL, OnnxClassifier


def op_shares(trace: list[dict]) -> tuple[dict[str, float], float]:
    """{op type: share of node kernel time} and the total kernel time in ms."""
    per_op: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    if not total:
        raise ValueError("the profile has no node kernel timings")
    return {op: us / total for op, us in per_op.most_common()}, total / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model", default=INT8_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    params = load_params()
    texts, _ = load_split(PROJECT_ROOT / params.paths.prepared, "test")
    with tempfile.TemporaryDirectory() as tmp:
        clf = OnnxClassifier(args.bundle, args.model, threads=args.threads, verify=False,
                             profile_prefix=str(Path(tmp) / "ort"))
        batches = [clf.encode(texts[i: i + args.batch])
                   for i in range(0, args.batch * args.runs, args.batch)]
        for feeds in batches:
            clf.session.run(["logits"], feeds)
        trace = json.loads(Path(clf.session.end_profiling()).read_text())
    shares, total_ms = op_shares(trace)
    tokens = sum(int(f["attention_mask"].size) for f in batches)
    write_result("profile_ort", {
        "bundle": str(args.bundle), "model": args.model, "threads": args.threads,
        "batch": args.batch, "runs": len(batches), "padded_tokens": tokens,
        "kernel_us_per_padded_token": round(total_ms * 1000 / tokens, 1),
        "op_share": {op: round(v, 4) for op, v in shares.items() if v >= 0.001},
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.profile_ort "
                   f"{args.bundle} --model {args.model} --batch {args.batch} "
                   f"--threads {args.threads} --runs {args.runs}"})


if __name__ == "__main__":
    main()
