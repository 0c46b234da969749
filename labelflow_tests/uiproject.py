"""Helpers for the real-component UI tests (webserver, browser, notebook): a temporary labelflow project
on disk (labelflow.yaml + tiny dataset + stores + a Dagster instance), the foundation graph materialised
in-process, and servers (`dagster dev`, `mlflow ui`) started on 127.0.0.1 in their own process group and
always stopped, even when a test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from labelflow_tests.conftest import REPO, TINY_POOL, TINY_TEST, TINY_TRAIN, write_csv
from labelflow_tests.project import free_port

VENV_BIN = REPO / ".venv" / "bin"
ARTIFACTS = REPO / "test-artifacts"
DATASET = "tiny"
FOUNDATION = ("seed_labels", "text_pool", "gold_eval", "hidden_pool_labels", "text_embeddings", "training_set",
              "svm_model", "pool_predictions", "evaluation")

# The environment every child process (and the in-process materialisation) runs with: offline, no telemetry.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


@dataclass
class UIProject:
    root: Path
    config_path: Path
    dagster_home: Path
    dataset: str = DATASET

    def config(self):
        from labelflow.config import load_config

        return load_config(self.config_path)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a child process that works on this project."""
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        env["LABELFLOW_CONFIG"] = str(self.config_path)
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(extra)
        return env

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.dagster_home))


def write_project(root: Path, dataset: str = DATASET) -> UIProject:
    """A project folder: the tiny 3-label dataset, a labelflow.yaml with relative store paths, and a
    DAGSTER_HOME with telemetry off."""
    root = Path(root)
    folder = root / "datasets" / dataset
    write_csv(folder / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(folder / "test.csv", TINY_TEST, ["text", "label"])
    write_csv(folder / "unlabeled.csv", TINY_POOL, ["text"])
    write_csv(folder / "labels.csv", [("refund", "The customer asks for their money back.")], ["label", "description"])
    cfg = {
        "stores": {"warehouse": "data/warehouse.duckdb", "lancedb": "data/lancedb", "mlflow_db": "data/mlflow.db",
                   "mlflow_artifacts": "data/mlartifacts", "models": "data/models"},
        "llm": {"model": "local"},
        "datasets": [{"name": dataset, "path": f"datasets/{dataset}", "task": "multiclass"}],
    }
    config_path = root / "labelflow.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return UIProject(root=root.resolve(), config_path=config_path.resolve(), dagster_home=home.resolve(), dataset=dataset)


def materialise_foundation(project: UIProject, times: int = 1) -> list[str]:
    """Materialise the foundation assets in-process on the project's own Dagster instance (so the UI shows
    the history); returns the run ids."""
    import dagster as dg

    from labelflow.defs.factory import build_definitions

    old = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        defs = build_definitions(project.config())
        keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys()
                if k.path[0] == project.dataset and k.path[-1] in FOUNDATION]
        job = defs.resolve_implicit_global_asset_job_def()
        run_ids = []
        with project.instance() as instance:
            for _ in range(times):
                result = job.execute_in_process(asset_selection=keys, instance=instance)
                assert result.success
                run_ids.append(result.run_id)
        return run_ids
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


class Server:
    """A child server process in its own process group (so its workers go down with it); output to a log
    file that is shown when it fails to come up."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_dir: Path, port: int):
        self.name, self.cmd, self.env, self.cwd, self.port = name, cmd, env, cwd, port
        self.url = f"http://127.0.0.1:{port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        self._log = self.log_path.open("wb")
        # start_new_session: a new process group, and SIGINT/SIGTERM with their default dispositions
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not {what} after {timeout:.0f}s (last error: {last!r}):\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        pgid = self.proc.pid  # leader of its own session/group
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left in the group (the leader or its workers) gets SIGKILL
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.proc.returncode


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def graphql(base_url: str, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    if out.get("errors"):
        raise RuntimeError(f"GraphQL errors: {out['errors']}")
    return out["data"]


ASSET_KEYS_QUERY = "{ assetNodes { assetKey { path } } }"


def asset_keys(base_url: str) -> set[tuple[str, ...]]:
    return {tuple(n["assetKey"]["path"]) for n in graphql(base_url, ASSET_KEYS_QUERY)["assetNodes"]}


def start_dagster(project: UIProject, log_dir: Path, timeout: float = 180.0) -> Server:
    """`dagster dev -m labelflow.definitions` on 127.0.0.1, returned once GraphQL lists the dataset's
    foundation assets. The caller must call ``stop()`` (also when this raises: the server is stopped here)."""
    port = free_port()
    server = Server("dagster-dev", [str(VENV_BIN / "dagster"), "dev", "-m", "labelflow.definitions",
                                    "-h", "127.0.0.1", "-p", str(port)],
                    env=project.env(), cwd=project.root, log_dir=log_dir, port=port).start()
    wanted = {(project.dataset, n) for n in FOUNDATION}
    try:
        server.wait_until(lambda: wanted <= asset_keys(server.url), timeout, "serving the asset graph")
    except BaseException:
        server.stop()
        raise
    return server


def start_mlflow_ui(project: UIProject, log_dir: Path, timeout: float = 120.0) -> Server:
    """`mlflow ui` on the project's sqlite store, returned once it answers HTTP."""
    cfg = project.config()
    port = free_port()
    server = Server("mlflow-ui", [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", cfg.mlflow_tracking_uri,
                                  "--default-artifact-root", str(cfg.mlflow_artifacts), "-h", "127.0.0.1",
                                  "-p", str(port)],
                    env=project.env(), cwd=project.root, log_dir=log_dir, port=port).start()

    def ready() -> bool:
        status, _ = http_get(f"{server.url}/health")
        return status == 200

    try:
        server.wait_until(ready, timeout, "answering /health")
    except BaseException:
        server.stop()
        raise
    return server
