"""`dagster dev` serves the labelflow graph: the webserver starts on 127.0.0.1 on a temporary project and
lists the dataset's assets over HTTP (GraphQL); it is stopped (process group, SIGTERM then SIGKILL) even
when the test fails."""

from __future__ import annotations

import pytest

from labelflow_tests.uiproject import ARTIFACTS, FOUNDATION, asset_keys, graphql, http_get, start_dagster, write_project

pytestmark = pytest.mark.slow


@pytest.fixture
def dagster_server(tmp_path):
    project = write_project(tmp_path / "project")
    server = start_dagster(project, log_dir=ARTIFACTS / "webserver")
    yield project, server
    code = server.stop()
    assert server.proc.poll() is not None, f"dagster dev still running after stop (code {code})"


def test_webserver_lists_dataset_assets(dagster_server):
    project, server = dagster_server
    status, body = http_get(f"{server.url}/server_info")
    assert status == 200 and b"dagster_webserver_version" in body
    keys = asset_keys(server.url)
    ours = {k for k in keys if k[0] == project.dataset}
    assert {(project.dataset, n) for n in FOUNDATION} <= ours
    assert all(k[0] == project.dataset for k in keys), "only the temporary project's dataset is served"
    groups = graphql(server.url, "{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    assert {g["groupName"] for g in groups} == {project.dataset}
