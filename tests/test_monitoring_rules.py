"""The Prometheus rules: rendered from params.yaml, valid for promtool, unit-tested, and each
alert with a runbook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from components.config import PROJECT_ROOT, load_params
from deploy.monitoring.rules import RULES_FILE, main, render_rules, runbook_anchor

RULES_TEST = RULES_FILE.with_name("tuneline-rules.test.yml")
RUNBOOKS = PROJECT_ROOT / "docs" / "operations" / "runbooks.md"


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
