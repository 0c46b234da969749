"""The UIs in a real browser (headless Debian Chromium driven by Playwright) on a temporary project whose
tiny dataset was materialised in-process on the same Dagster instance:

* `dagster dev`: the asset graph page shows the dataset's assets; the Materialize button of one asset
  launches a run that succeeds (checked over GraphQL and in the instance);
* `mlflow ui`: the experiment page lists the evaluation runs, and each run page shows its macro_f1.

Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from labelflow_tests.uiproject import (
    ARTIFACTS,
    FOUNDATION,
    graphql,
    launch_dagster,
    launch_mlflow_ui,
    wait_dagster,
    wait_mlflow_ui,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "browser"
UI_ASSET = "text_embeddings"  # the asset launched from the UI (a single asset, no LLM)

RUNS_QUERY = """{ runsOrError { __typename ... on Runs { results { runId status assetSelection { path } } } } }"""


@pytest.fixture(scope="module")
def project(request):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium and chromium-driver packages (make browser)")
    return request.getfixturevalue("materialised_ui_project")


@pytest.fixture(scope="module")
def servers(project):
    """`dagster dev` and `mlflow ui` on 127.0.0.1, started side by side, always stopped."""
    logs = ARTIFACTS / "browser-logs"
    mlflow_srv = launch_mlflow_ui(project, logs)
    try:
        dagster_srv = wait_dagster(launch_dagster(project, logs), project)
    except BaseException:
        mlflow_srv.stop()
        raise
    try:
        wait_mlflow_ui(mlflow_srv)
        yield {"dagster": dagster_srv, "mlflow": mlflow_srv}
    finally:
        mlflow_srv.stop()
        dagster_srv.stop()


@pytest.fixture(scope="module")
def browser(project, tmp_path_factory):
    """Headless Chromium with a fresh profile (Playwright takes the user-data-dir as an argument)."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 950},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # the UIs load slowly on a busy 2-core machine
    pg = browser.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    pg.close()


def _dismiss_dagster_onboarding(page) -> None:
    # dagster-webserver may show a "Join the Dagster community" dialog to a fresh browser profile; it
    # remembers "Skip" in localStorage (communityNux), and a handler clicks Skip if it shows anyway
    page.add_init_script("try { localStorage.setItem('communityNux', '\"1\"') } catch (e) {}")
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
    )


def _settle(page, timeout_ms: int = 15_000) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
    except PlaywrightTimeout:  # a UI that keeps polling never goes idle; the screenshot is still useful
        pass


def _runs(base_url: str) -> dict[str, dict]:
    data = graphql(base_url, RUNS_QUERY)["runsOrError"]
    assert data["__typename"] == "Runs", data
    return {r["runId"]: r for r in data["results"]}


def test_dagster_ui_shows_graph_and_materialises_one_asset(project, servers, page):
    from playwright.sync_api import expect

    base = servers["dagster"].url
    _dismiss_dagster_onboarding(page)

    # the dataset's asset graph (its group) lists every foundation asset, all materialised before
    page.goto(f"{base}/asset-groups/{project.dataset}", wait_until="domcontentloaded")
    for name in FOUNDATION:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
    _settle(page)  # let the materialisation statuses load before the screenshot
    page.screenshot(path=str(SHOTS / "dagster_asset_graph.png"))

    # launch one asset from its page
    before = set(_runs(base))
    page.goto(f"{base}/assets/{project.dataset}/{UI_ASSET}", wait_until="domcontentloaded")
    expect(page.get_by_text("Lineage").first).to_be_visible()
    page.locator("button").filter(has_text=re.compile(r"^\W*Materialize\W*$")).click()
    expect(page.get_by_text("Launched run")).to_be_visible()

    deadline, run = time.monotonic() + 150, None
    while time.monotonic() < deadline:
        new = [r for rid, r in _runs(base).items() if rid not in before]
        if new:
            run = new[0]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
        time.sleep(1)
    assert run is not None, "no run was launched by the Materialize button"
    page.goto(f"{base}/runs/{run['runId']}", wait_until="domcontentloaded")
    expect(page.get_by_text(UI_ASSET).first).to_be_visible()
    page.screenshot(path=str(SHOTS / "dagster_ui_run.png"))
    assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']} (see {SHOTS / 'dagster_ui_run.png'})"
    assert [a["path"] for a in run["assetSelection"]] == [[project.dataset, UI_ASSET]]

    # the instance recorded the new materialisation, by that run
    import dagster as dg

    with project.instance() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey([project.dataset, UI_ASSET]))
    assert event is not None and event.run_id == run["runId"]
    meta = event.asset_materialization.metadata
    assert meta["computed"].value == 0 and meta["reused"].value == meta["texts"].value == 21


def test_mlflow_ui_lists_runs_with_macro_f1(project, servers, page):
    import mlflow
    from playwright.sync_api import expect

    base = servers["mlflow"].url
    client = mlflow.MlflowClient(tracking_uri=project.config().mlflow_tracking_uri)
    exp = client.get_experiment_by_name(f"labelflow/{project.dataset}")
    assert exp is not None
    evals = client.search_runs([exp.experiment_id], filter_string="tags.asset = 'evaluation'")
    assert evals, "no evaluation run in MLflow"

    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs", wait_until="domcontentloaded")
    for r in evals:
        expect(page.locator(f'a[href*="{r.info.run_id}"]').first).to_be_visible()
    expect(page.get_by_text("matching runs")).to_be_visible()
    _settle(page)
    page.screenshot(path=str(SHOTS / "mlflow_experiment_runs.png"))

    for i, r in enumerate(evals):
        page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{r.info.run_id}", wait_until="domcontentloaded")
        row = page.get_by_role("row").filter(has=page.get_by_text("macro_f1", exact=True))
        expect(row.first).to_be_visible()
        shown = row.first.inner_text().split()
        assert shown[0] == "macro_f1"
        assert float(shown[1]) == pytest.approx(r.data.metrics["macro_f1"], abs=1e-3)
        if i == 0:
            row.first.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "mlflow_run_macro_f1.png"))
