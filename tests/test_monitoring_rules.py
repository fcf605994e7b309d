"""The Prometheus rules: rendered from params.yaml, valid for promtool, unit-tested, each alert
with a runbook; the rules and the Grafana dashboard query only metrics the server exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from components.config import PROJECT_ROOT, load_params
from deploy.monitoring.rules import RULES_FILE, main, render_rules, runbook_anchor
from deploy.serve.metrics import ServeMetrics
from deploy.serve.monitor import PredictionMonitor

RULES_TEST = RULES_FILE.with_name("tuneline-rules.test.yml")
RUNBOOKS = PROJECT_ROOT / "docs" / "operations" / "runbooks.md"
DASHBOARD = RULES_FILE.with_name("grafana-dashboard.json")
# The series names a family of each type exposes (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created")}
PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "rate", "increase", "irate", "delta",
                "histogram_quantile", "changes", "max_over_time", "min_over_time", "absent",
                "time", "and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
            for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def test_committed_rules_equal_the_rendering_of_params_yaml():
    assert RULES_FILE.read_text() == render_rules(load_params()), \
        "deploy/monitoring/tuneline-rules.yml is stale: run python -m deploy.monitoring.rules"
    assert main(["--check"]) == 0


def test_thresholds_come_from_params(tmp_path):
    out = tmp_path / "rules.yml"
    assert main(["--set", "monitoring.alerts.max_psi=0.5", "--set",
                 "monitoring.alerts.drift_for_minutes=45", "--out", str(out)]) == 0
    text = out.read_text()
    assert "expr: tuneline_prediction_psi > 0.5\n    for: 45m" in text
    assert main(["--check", "--out", str(out)]) == 1  # differs from the default params
    assert main(["--set", "monitoring.alerts.max_psi=-1", "--out", str(out)]) == 2


def test_promtool_checks_and_unit_tests_pass():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES_FILE)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout + check.stderr
    unit = subprocess.run([tool, "test", "rules", RULES_TEST.name], capture_output=True,
                          text=True, timeout=120, cwd=RULES_TEST.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout + unit.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    tool = promtool()
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES_FILE.read_text().replace("tuneline_prediction_psi >",
                                                  "tuneline_prediction_psi >>"))
    check = subprocess.run([tool, "check", "rules", str(bad)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode != 0


def test_every_alert_is_unit_tested():
    tested = {case["alertname"] for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in group.get("alert_rule_test", [])}
    # Each alert has a case in which it fires, not only cases where it stays quiet.
    firing = {case["alertname"] for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
    names = set(alert_names())
    assert len(names) == len(alert_names()) >= 10
    assert names - tested == set(), "alerts without a promtool test case"
    assert names - firing == set(), "alerts never expected to fire in a test case"
    assert tested - names == set(), "test cases for alerts that do not exist"


def test_every_alert_links_its_runbook_section():
    base = load_params().monitoring.alerts.runbook_base_url
    text = RUNBOOKS.read_text()
    # mkdocs' toc slug of a heading made of one CamelCase word: the word in lower case.
    anchors = {m.group(1).lower() for m in re.finditer(r"^## (\w+)\s*$", text, re.M)}
    for rule in rules():
        if "alert" not in rule:
            continue
        anchor = runbook_anchor(rule["alert"])
        assert rule["annotations"]["runbook_url"] == f"{base}#{anchor}"
        assert anchor in anchors, f"{RUNBOOKS.name} has no '## {rule['alert']}' section"
    assert anchors == {runbook_anchor(name) for name in alert_names()}, \
        "a runbook section for an alert that does not exist"


def test_runbook_base_url_comes_from_params(tmp_path):
    out = tmp_path / "rules.yml"
    assert main(["--set", "monitoring.alerts.runbook_base_url=https://docs.example.org/rb/",
                 "--set", "serve.stuck_batch_s=45", "--out", str(out)]) == 0
    text = out.read_text()
    assert "runbook_url: https://docs.example.org/rb/#tunelinetargetabsent" in text
    assert "tuneline_batch_running_seconds > 45" in text


def exported_metrics() -> set[str]:
    """Every series name the server's /metrics can show: its registry and the drift monitor."""
    metrics = ServeMetrics()

    class IdleBatcher:
        queued_texts = 0

        def running_for(self) -> float:
            return 0.0

    metrics.watch_batcher(IdleBatcher())
    metrics.registry.register(PredictionMonitor(load_params().monitoring))
    return {family.name + suffix for family in metrics.registry.collect()
            for suffix in SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query) selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)          # label values
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)      # matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS
    return {n for n in names if not n.startswith("__")}


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # Grafana's label_values(METRIC, LABEL): the metric is what it selects.
            queries.append(re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", query))
    return queries


def test_metric_names_are_read_from_promql():
    assert metric_names('sum by (job, le) (rate(tuneline_x_bucket{route="/a b",le=~"1|2"}[5m]))'
                        " / on (job) group_left up") == {"tuneline_x_bucket", "up"}
    assert metric_names("time() - max(tuneline_a) > 3 or absent(up == 1)") == {"tuneline_a",
                                                                               "up"}


def test_dashboard_queries_only_exported_metrics():
    exported = exported_metrics()
    assert {"tuneline_requests_total", "tuneline_model_info", "tuneline_prediction_psi",
            "tuneline_request_latency_seconds_bucket"} <= exported
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = set()
    for query in queries:
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported, f"{query!r} selects {names - exported}, not exported"
        used |= names
    # The panels the operations page promises.
    for metric in ("tuneline_requests_total", "tuneline_request_latency_seconds_bucket",
                   "tuneline_request_errors_total", "tuneline_prediction_psi",
                   "tuneline_model_info", "tuneline_model_reload_failing"):
        assert metric in used, f"no panel shows {metric}"


def test_dashboard_panels_are_well_formed():
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for word in ("throughput", "latency", "error", "503", "drift", "version", "reload"):
        assert word in titles
    latency = next(p for p in board["panels"] if "latency" in p["title"].lower())
    assert [re.search(r"histogram_quantile\((0\.\d+)", t["expr"]).group(1)
            for t in latency["targets"]] == ["0.5", "0.95", "0.99"]
    # The drift panel's red line is the alert's threshold.
    drift = next(p for p in board["panels"] if "drift" in p["title"].lower())
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == load_params().monitoring.alerts.max_psi


def test_rules_query_only_exported_metrics():
    known = exported_metrics() | {"up"} | {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names and names <= known, f"{rule.get('alert') or rule['record']}: {names - known}"
