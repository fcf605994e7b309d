"""The Prometheus rules: rendered from params.yaml, valid for promtool, and unit-tested."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from components.config import load_params
from deploy.monitoring.rules import RULES_FILE, main, render_rules

RULES_TEST = RULES_FILE.with_name("tuneline-rules.test.yml")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def test_committed_rules_equal_the_rendering_of_params_yaml():
    assert RULES_FILE.read_text() == render_rules(load_params().monitoring.alerts), \
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
    assert "SUCCESS: 8 rules found" in check.stdout + check.stderr
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
