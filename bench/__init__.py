"""Benchmarks (not part of the installed package).

    bench_<name>.py          a benchmark: runs its measurements and writes
                             bench/results/<name>.json (`make bench` runs them all)
    <name>_measure.py        one measurement in a process of its own (peak memory and
                             allocator state are its own); prints one JSON line
    common.py                shared plumbing: isolation, medians, result files
    serve_profile.py         CPU accounting of a serving run (used by the serving benchmarks)
    profile_ort.py           a tool: ONNX Runtime's own profile of a bundle, per operator

Paired comparisons of two models use the gate's statistics
(`components.evaluate.stats.paired_accuracy`).
"""
