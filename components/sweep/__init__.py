"""Hyperparameter sweeps: an Optuna study over `sweep.space`, one finetune stage per trial.

    plan = open_sweep(params)              # create or resume the study, open the MLflow run
    number, values = TrialQueue(params, plan).next()   # in the driver: ask
    record = run_trial(params, plan, number, values)  # on any worker: train, report, tell
    summary = summarize(params, plan, why)  # table, best values, plot, MLflow
    runs = confirm_plan(params, summary["best"])  # winner and baseline, several seeds...
    records = [run_confirmation(params, plan, **r) for r in runs]  # ...on any worker
    verdict = judge(params, plan, records)  # which of the two ships
    place_winner(params, plan, shipped)  # then the normal chain, with its values

The drivers (the `sweep` flow, fanning trials out on Dask) only decide where trials run.
"""

from components.sweep.confirm import confirm_plan, judge, run_confirmation
from components.sweep.space import (
    as_overrides,
    check_space,
    current_values,
    search_space,
    with_values,
)
from components.sweep.study import SweepPlan, load_study, open_sweep, stop_reason
from components.sweep.summary import place_winner, summarize, table
from components.sweep.trial import TrialQueue, run_trial, trial_params
from components.sweep.workers import for_workers

__all__ = ["SweepPlan", "TrialQueue", "as_overrides", "check_space", "confirm_plan",
           "current_values", "for_workers", "judge", "load_study", "open_sweep", "place_winner",
           "run_confirmation", "run_trial", "search_space", "stop_reason", "summarize", "table",
           "trial_params", "with_values"]
