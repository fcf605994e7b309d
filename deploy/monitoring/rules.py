"""Render the Prometheus rules of the serving app from params.yaml `monitoring.alerts`.

    python -m deploy.monitoring.rules            # rewrite deploy/monitoring/tuneline-rules.yml
    python -m deploy.monitoring.rules --check    # exit 1 when the file differs from params

The thresholds live once, in params.yaml (`monitoring.alerts`, and `serve.stuck_batch_s`
for readiness); the rules file is generated from them and a test keeps the committed file
equal to the rendering. Every alert links its section of docs/operations/runbooks.md. Validate with
`promtool check rules` / `promtool test rules` (tests/test_monitoring_rules.py does both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from components.config import AlertsConfig, ConfigError, Params, load_params
from components.io import atomic_write_text

RULES_FILE = Path(__file__).resolve().parent / "tuneline-rules.yml"
PREDICT = 'route="/v1/predict"'
HEADER = ("# Generated from params.yaml `monitoring.alerts` by `python -m deploy.monitoring.rules`"
          "; do not edit.\n# Load into Prometheus with `rule_files:`; metrics are those of "
          "deploy/serve (GET /metrics).\n")


def _num(value: float) -> str:
    """A PromQL number literal without float noise (0.25, 1209600)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def runbook_anchor(alert: str) -> str:
    """The anchor of an alert's section in docs/operations/runbooks.md (a `## <alert>`
    heading, slugged by mkdocs: lower case)."""
    return alert.lower()


def _alert(name: str, expr: str, minutes: int, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if minutes:
        rule["for"] = f"{minutes}m"
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def recording_rules(a: AlertsConfig) -> list[dict[str, Any]]:
    w = f"{a.rate_window_minutes}m"
    return [
        {"record": f"tuneline:predict_error_ratio:rate{w}",
         "expr": f'sum by (job) (rate(tuneline_requests_total{{{PREDICT},status=~"5.."}}[{w}]))'
                 f" / sum by (job) (rate(tuneline_requests_total{{{PREDICT}}}[{w}]))"},
        {"record": f"tuneline:predict_latency_seconds:p99_rate{w}",
         "expr": "histogram_quantile(0.99, sum by (job, le) "
                 f"(rate(tuneline_request_latency_seconds_bucket{{{PREDICT}}}[{w}])))"},
    ]


def alert_rules(a: AlertsConfig) -> list[dict[str, Any]]:
    w, r = f"{a.rate_window_minutes}m", f"{a.readiness_window_minutes}m"
    flaps = _num(a.max_readiness_changes)
    return [
        _alert("TunelineHighErrorRate",
               f"tuneline:predict_error_ratio:rate{w} > {_num(a.max_error_ratio)}",
               a.error_for_minutes, "page", "{{ $labels.job }}: predict requests are failing",
               "{{ $value | humanizePercentage }} of /v1/predict requests answered 5xx "
               f"over {w}; see /readyz and the server log."),
        _alert("TunelineHighLatencyP99",
               f"tuneline:predict_latency_seconds:p99_rate{w} > {_num(a.max_p99_latency_s)}",
               a.latency_for_minutes, "warning", "{{ $labels.job }}: p99 predict latency is high",
               "p99 of /v1/predict is {{ $value | humanizeDuration }} over " + w + "; "
               "the replicas may be saturated (scale out) or the host is busy."),
        _alert("TunelineReadinessFlapping",
               f"changes(tuneline_model_ready[{r}]) > {flaps} or (changes(up[{r}]) > {flaps} "
               f"and on (job, instance) max_over_time(tuneline_model_ready[{r}]))",
               0, "warning", "{{ $labels.instance }}: readiness is flapping",
               "The server went ready/unready or up/down {{ $value }} times in " + r + "; "
               "it is restarting or failing its probes."),
        _alert("TunelineModelTooOld",
               "time() - tuneline_model_created_timestamp_seconds > "
               f"{_num(a.max_model_age_days * 86400)}", 0, "warning",
               "{{ $labels.instance }}: the served model is old",
               "The served version was registered {{ $value | humanizeDuration }} ago; "
               "scheduled retrains are failing or the gate keeps rejecting (tuneline models)."),
        _alert("TunelinePredictionDrift",
               f"tuneline_prediction_psi > {_num(a.max_psi)}", a.drift_for_minutes, "warning",
               "{{ $labels.instance }}: predictions of version {{ $labels.version }} drifted",
               "{{ $labels.kind }} PSI {{ $value | printf \"%.3f\" }} against the version's "
               "own test split: production inputs no longer look like the training data; "
               "look at tuneline_predictions_total and retrain on recent data."),
        _alert("TunelineDriftReferenceMissing", "tuneline_prediction_reference_loaded == 0",
               a.drift_for_minutes, "info",
               "{{ $labels.instance }}: version {{ $labels.version }} has no drift reference",
               "The served version was registered without a test-split prediction "
               "distribution, so its drift is not measured."),
    ]


def fleet_rules(a: AlertsConfig, stuck_batch_s: float) -> list[dict[str, Any]]:
    """Alerts about the replicas as a set: loading, readiness, agreement, presence."""
    up = f'up{{job="{a.scrape_job}"}}'
    return [
        _alert("TunelineReloadFailing", "tuneline_model_reload_failing == 1",
               a.reload_failing_for_minutes, "warning",
               "{{ $labels.instance }}: loading a new model version keeps failing",
               "Every load attempt of the version @champion names has failed for "
               f"{a.reload_failing_for_minutes}m; the replica keeps serving its previous "
               "version (if any). /readyz shows failed_version and last_reload_error."),
        _alert("TunelineReplicaNotReady",
               f"({up} == 0) or (tuneline_model_ready == 0) "
               f"or (tuneline_batch_running_seconds > {_num(stuck_batch_s)})",
               a.not_ready_for_minutes, "warning",
               "{{ $labels.instance }}: replica not ready",
               f"For {a.not_ready_for_minutes}m the replica has been down, without a loaded "
               f"model, or running a batch for more than {_num(stuck_batch_s)} s "
               "(serve.stuck_batch_s); it gets no traffic. See /readyz and the pod's events."),
        _alert("TunelineModelVersionSkew",
               'count by (job) (count by (job, version) (tuneline_model_info{version!=""})) > 1',
               a.version_skew_for_minutes, "warning",
               "{{ $labels.job }}: replicas serve different model versions",
               "{{ $value }} model versions have been served at once for "
               f"{a.version_skew_for_minutes}m: the same text gets different answers "
               "depending on the replica. Some replica failed to load the new version "
               "or cannot reach the registry."),
        _alert("TunelineTargetAbsent",
               f"absent({up}) or (sum by (job) ({up}) == 0)",
               a.absent_for_minutes, "page",
               "{{ $labels.job }}: no serving replica is up",
               f"Prometheus has scraped no replica of job {a.scrape_job} for "
               f"{a.absent_for_minutes}m: none is discovered (Deployment scaled to 0, labels "
               "or scrape config changed) or none answers /metrics."),
    ]


def with_runbooks(rules: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """Each alert's `runbook_url`: its section of the runbook page."""
    for rule in rules:
        rule["annotations"]["runbook_url"] = f"{base_url}#{runbook_anchor(rule['alert'])}"
    return rules


def render_rules(params: Params) -> str:
    """The rules file of `params`: recording rules, then the alerts."""
    alerts = params.monitoring.alerts
    rules = alert_rules(alerts) + fleet_rules(alerts, params.serve.stuck_batch_s)
    doc = {"groups": [
        {"name": "tuneline-serve.recording", "rules": recording_rules(alerts)},
        {"name": "tuneline-serve.alerts",
         "rules": with_runbooks(rules, alerts.runbook_base_url)},
    ]}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.monitoring.rules",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="params.yaml to read (default: the project's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RULES_FILE)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if --out differs from the rendering")
    args = parser.parse_args(argv)
    try:
        text = render_rules(load_params(args.params, args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        if not same:
            print(f"{args.out} is out of date: run python -m deploy.monitoring.rules",
                  file=sys.stderr)
        return 0 if same else 1
    atomic_write_text(args.out, text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
