"""The Prefect UI in a real headless Chromium, as a person uses it.

`tuneline ui` on non-default ports (Prefect server, MLflow server, the deployments' runner);
then, in the browser: Deployments > retrain > Run > Custom run, strategy `mezo` and PEFT
`lora` picked from dropdowns, 8 steps typed, Submit, View run, wait for Completed. MLflow
must then hold a version trained that way; its page in MLflow's UI, its LoggedModel (the
test-split dataset of its metrics, the model card and the evaluation plots) and the Prefect
automation `tuneline deploy` made are opened too. Then `promote` and `rollback` are run from
their own Custom run forms and MLflow must record who, when and why on the versions.

Screenshots of every page land in the test's output folder, or, with
TUNELINE_WRITE_SCREENSHOTS=1, in docs/ as the pages' illustrations (`ui-*.png`):

    TUNELINE_WRITE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_ui_browser.py
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.prefect_support import (
    SERVER_TIMEOUT_S,
    MlflowREST,
    PrefectAPI,
    answers,
    base_env,
    running,
    start_tuneline_ui,
    wait_for,
    write_tiny_project,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# This machine's closed network refuses the browser's background connections: keep it quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL = "tuneline-classifier"
DOCS = Path(__file__).resolve().parents[1] / "docs"
WEBHOOK = "http://127.0.0.1:9/tuneline-hook"  # nothing listens: only the automation is seen
UI_ERRORS = ("[object Object]", "__prefect_kind", 'Property is type "None"',
             "Can't connect to Server API")


def screenshots_dir(tmp_path: Path) -> Path:
    """docs/ when TUNELINE_WRITE_SCREENSHOTS=1 (regenerating the docs' images), else tmp."""
    if os.environ.get("TUNELINE_WRITE_SCREENSHOTS") == "1":
        return DOCS
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    return shots


def open_custom_run(page, base_url: str, deployment: str, first_field: str) -> None:
    """From the UI's front page to the deployment's Custom run form, by clicking."""
    page.goto(base_url, wait_until="networkidle")
    page.get_by_role("link", name="Deployments").first.click()
    page.get_by_role("link", name=deployment, exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    page.wait_for_url(re.compile(r".*/deployment/[0-9a-f-]{36}/run.*"))
    page.locator("label").filter(has_text=re.compile(f"^{first_field}")).first.wait_for()
    page.wait_for_load_state("networkidle")


def pick(page, field: str, option: str) -> None:
    page.get_by_role("button", name=f"Select {field}").click()
    page.get_by_role("option", name=option, exact=True).click()


def submit_and_watch(page, api: PrefectAPI, procs, shot: Path | None = None) -> dict:
    """Submit the form, follow "View run", wait until the run page says Completed."""
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("View run").click()
    page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]{36}.*"))
    run_id = re.search(r"flow-run/([0-9a-f-]{36})", page.url).group(1)
    run = api.wait_final(run_id, 900, procs)
    assert run["state"]["type"] == "COMPLETED", (run["state"], [p.tail() for p in procs])
    page.get_by_text("Completed", exact=True).first.wait_for(timeout=60_000)
    page.reload(wait_until="networkidle")  # as a person would; also clears the "View run" toast
    page.get_by_text("Completed", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("Finished in state Completed").last.wait_for(timeout=60_000)  # the logs
    if shot is not None:
        page.wait_for_timeout(2000)  # the timeline is drawn after the logs arrive
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(shot), full_page=True)
    return run


def test_a_person_retrains_promotes_and_rolls_back_in_the_prefect_ui(tmp_path,
                                                                     tiny_backbone_dir):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium package is needed (.ci/run installs it)"
    shots = screenshots_dir(tmp_path)
    params_file = write_tiny_project(tmp_path, tiny_backbone_dir,
                                     [f"notify.webhook_url={WEBHOOK}"])
    ui, prefect_port, mlflow_port = start_tuneline_ui(tmp_path, params_file, base_env(tmp_path))
    base = f"http://127.0.0.1:{prefect_port}"
    api, mlflow = PrefectAPI(f"{base}/api"), MlflowREST(f"http://127.0.0.1:{mlflow_port}")
    with running(ui):
        wait_for(lambda: answers(mlflow.http, "/health") and api.deployment("rollback"),
                 SERVER_TIMEOUT_S, "tuneline ui: both servers and the deployments", [ui])
        # The page must talk to the API on the port it was served from, not 4200.
        assert httpx.get(f"{base}/ui-settings").json()["api_url"] == f"{base}/api"

        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                args=CHROMIUM_ARGS, headless=True, viewport={"width": 1400, "height": 1000})
            browser.set_default_timeout(60_000)
            page = browser.new_page()
            try:
                # 1. A retrain with a strategy and a PEFT method picked from dropdowns.
                open_custom_run(page, base, "retrain", "data_path")
                form = page.inner_text("body")
                for bad in UI_ERRORS:
                    assert bad not in form
                assert "finetune.strategy" in form  # the description names the params key
                assert page.get_by_role("button", name="Select strategy").inner_text() == "adamw"
                pick(page, "strategy", "mezo")
                pick(page, "peft_method", "lora")
                page.get_by_label("max_steps (Optional)").fill("8")
                page.screenshot(path=str(shots / "ui-retrain-form.png"), full_page=True)
                run = submit_and_watch(page, api, [ui], shots / "ui-retrain-run.png")
                run_url = page.url
                assert run["parameters"]["strategy"] == "mezo"
                assert run["parameters"]["max_steps"] == 8
                assert "__prefect_kind" not in str(run["parameters"])

                # The gate's verdict, as a person reads it: Artifacts > gate-report.
                page.get_by_role("tab", name="Artifacts").click()
                page.get_by_text("gate-report", exact=True).first.click()
                # The key's page lists its versions (one per run): open this run's.
                page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
                page.get_by_role("heading", name="Gate PASSED (first model: absolute rules only)"
                                 ).wait_for()
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(shots / "ui-gate-report.png"), full_page=True)

                versions = mlflow.versions(MODEL)
                assert [v["version"] for v in versions] == ["1"]
                tags = mlflow.tags(MODEL, "1")
                assert (tags["strategy"], tags["peft_method"]) == ("mezo", "lora")
                assert tags["gate_passed"] == "true"
                assert mlflow.aliases(MODEL) == {"champion": "1"}
                see_plots_and_version_link(page, run_url, shots)
                see_version_in_mlflow(page, mlflow, f"http://127.0.0.1:{mlflow_port}", tags,
                                      shots)
                see_automation(page, base, shots)

                # 2. A second version (held back by the gate) promoted by hand, then undone.
                second = register_challenger(params_file, tmp_path)
                open_custom_run(page, base, "promote", "version")
                page.get_by_label("version", exact=True).fill(second)
                page.get_by_label("reason", exact=True).fill("INC-7: v1 mislabels refunds")
                page.get_by_label("requested_by (Optional)").fill("Dana Ops")
                page.screenshot(path=str(shots / "ui-promote-form.png"), full_page=True)
                submit_and_watch(page, api, [ui])
                assert mlflow.aliases(MODEL) == {"champion": second, "previous": "1"}
                tags = mlflow.tags(MODEL, second)
                assert tags["promotion"] == "manual"
                assert tags["promoted_by"].startswith("Dana Ops (Prefect flow run ")
                assert tags["promotion_reason"] == "INC-7: v1 mislabels refunds"
                assert time.time() - _epoch(tags["promoted_at"]) < 3600

                open_custom_run(page, base, "rollback", "reason")
                page.get_by_label("reason", exact=True).fill("INC-8: v2 slower than promised")
                submit_and_watch(page, api, [ui], shots / "ui-rollback-run.png")
                assert mlflow.aliases(MODEL) == {"champion": "1"}
                tags = mlflow.tags(MODEL, second)
                assert tags["rollback_reason"] == "INC-8: v2 slower than promised"
                assert "Prefect flow run" in tags["rolled_back_by"] and tags["rolled_back_at"]
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    for name in ("retrain-form", "retrain-run", "gate-report", "evaluation-plots",
                 "promote-form", "mlflow-version", "mlflow-logged-model", "mlflow-model-card",
                 "prefect-automation"):
        assert (shots / f"ui-{name}.png").stat().st_size > 10_000, name


def see_plots_and_version_link(page, run_url: str, shots: Path) -> None:
    """The run's Artifacts tab: the plots render as images; a link leads to the version."""
    page.goto(run_url, wait_until="networkidle")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("mlflow-model-version", exact=True).first.wait_for()
    page.get_by_text("evaluation-plots", exact=True).first.click()
    page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
    images = page.locator("img[alt='reliability'], img[alt='per_class_f1'], "
                          "img[alt='confusion_matrix']")
    images.first.wait_for()
    page.wait_for_load_state("networkidle")
    widths = images.evaluate_all("els => els.map(e => e.naturalWidth)")
    assert len(widths) == 3 and min(widths) > 200, widths  # decoded PNGs, not broken icons
    page.screenshot(path=str(shots / "ui-evaluation-plots.png"), full_page=True)


def see_version_in_mlflow(page, mlflow: MlflowREST, url: str, tags: dict, shots: Path) -> None:
    """MLflow's UI: the version page (verdict and model card in its description), its
    LoggedModel (metrics on the test dataset, the datasets used) and the card's file."""
    page.goto(f"{url}/#/models/{MODEL}/versions/1", wait_until="domcontentloaded")
    page.get_by_text("Intended use").first.wait_for()  # the card, rendered as Markdown
    page.get_by_text("release_fingerprint").first.wait_for()
    close_assistant(page)
    page.screenshot(path=str(shots / "ui-mlflow-version.png"), full_page=True)
    model = mlflow.http.get(f"/ajax-api/2.0/mlflow/logged-models/{tags['model_id']}").json()
    logged = f"{url}/#/experiments/{model['model']['info']['experiment_id']}/models/" \
             f"{tags['model_id']}"
    page.goto(logged, wait_until="domcontentloaded")
    page.get_by_text("Datasets used").first.wait_for()
    page.get_by_text("test_accuracy").first.wait_for()
    test_set = page.get_by_text(re.compile(f"^{MODEL}-test \\(#[0-9a-f]{{32}}\\)$"))
    assert test_set.count() >= 2  # beside each metric, and among the datasets used
    close_assistant(page)
    page.screenshot(path=str(shots / "ui-mlflow-logged-model.png"), full_page=True)
    page.goto(f"{logged}/artifacts", wait_until="domcontentloaded")
    for name in ("reports", "card", "model_card.md"):
        page.get_by_text(name, exact=True).first.click()
    page.get_by_role("heading", name="Intended use").wait_for()
    close_assistant(page)
    page.screenshot(path=str(shots / "ui-mlflow-model-card.png"), full_page=True)


def close_assistant(page) -> None:
    """MLflow's assistant panel opens by itself; a screenshot shows the page without it."""
    page.wait_for_timeout(1000)  # let the panel mount before looking for it
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()
    page.wait_for_timeout(500)


def see_automation(page, base: str, shots: Path) -> None:
    """The notification automations `tuneline deploy` made, on Prefect's Automations page."""
    page.goto(f"{base}/automations", wait_until="networkidle")
    for event in ("rejected", "rolled-back", "retrain-failed"):
        page.get_by_text(f"tuneline notify: {MODEL} {event}", exact=True).first.wait_for()
    page.get_by_text("tuneline-notify").first.wait_for()  # the webhook block they send with
    page.screenshot(path=str(shots / "ui-prefect-automation.png"), full_page=True)


def register_challenger(params_file: Path, tmp_path: Path) -> str:
    """Publish a tiny exported bundle as a version the gate held back (@challenger)."""
    from components.config import load_params
    from components.registry.tracking import start_run
    from components.registry.versions import publish
    from tests.serve_support import export_tiny_bundle

    params = load_params(params_file)
    labels = (params.paths.prepared / "labels.json").read_text()
    bundle = export_tiny_bundle(tmp_path / "bundle-v2", params.model.name_or_path,
                                json.loads(labels)["labels"], seed=2)
    run_id = start_run(params, None, run_name="held back")
    verdict = {"passed": False, "reasons": ["held back for the test"]}
    return publish(params, run_id, bundle, verdict)["version"]


def _epoch(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
