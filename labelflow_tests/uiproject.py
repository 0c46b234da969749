"""Helpers for the real-component UI tests (webserver, browser, notebook): a temporary labelflow project
on disk (labelflow.yaml + tiny dataset + stores + a Dagster instance), the foundation graph materialised
in-process, and servers (`dagster dev`, `mlflow ui`) started on 127.0.0.1 in their own process group and
always stopped, even when a test fails."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from labelflow_tests.conftest import REPO, TINY_POOL, TINY_TEST, TINY_TRAIN, write_csv
from labelflow_tests.fake_openai import Reply, extract_texts
from labelflow_tests.project import TEMP_STORES, free_port

VENV_BIN = REPO / ".venv" / "bin"
ARTIFACTS = REPO / "test-artifacts"
DATASET = "tiny"
FOUNDATION = (
    "seed_labels",
    "text_pool",
    "gold_eval",
    "hidden_pool_labels",
    "text_embeddings",
    "training_set",
    "svm_model",
    "pool_predictions",
    "evaluation",
)

FAKE_KEY_ENV = "LABELFLOW_TEST_FAKE_LLM_KEY"
# what the fake LLM looks for in a text to say it has the label (the tiny dataset's three intents)
TINY_KEYWORDS = {"card_arrival": ("card",), "refund": ("refund", "money"), "password_reset": ("password",)}
_LABEL_RE = re.compile(r"^Label: (.+)$", re.M)

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
        env.setdefault(FAKE_KEY_ENV, "not-a-real-key")
        env["LABELFLOW_CONFIG"] = str(self.config_path)
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(extra)
        return env

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.dagster_home))


def tiny_expert_policy(body: dict):
    """A fake LLM that knows the tiny dataset: yes iff the text has one of the asked label's keywords
    (one text, or a numbered batch), with a log-probability margin; a short description otherwise."""
    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = str(user[-1]["content"]) if user else ""
    texts = extract_texts(body)
    found = _LABEL_RE.search(content)
    if not texts or not found:
        return Reply("Texts that ask about this topic; not texts about the other intents.")
    keys = TINY_KEYWORDS.get(found.group(1).strip(), ())

    def decide(t: str) -> bool:
        return any(k in t.lower() for k in keys)

    def top(yes: bool) -> dict:
        return {"yes": -0.01, "no": -6.0} if yes else {"no": -0.01, "yes": -6.0}

    if '<text id="' not in content:
        yes = decide(next(iter(texts.values())))
        return Reply("yes" if yes else "no", top=top(yes))
    answers = [(n, decide(t)) for n, t in sorted(texts.items())]
    return Reply("\n".join(f"{n}: {'yes' if y else 'no'}" for n, y in answers), top=[top(y) for _, y in answers])


def write_project(
    root: Path, dataset: str = DATASET, llm_api_base: str | None = None, dataset_options: dict | None = None
) -> UIProject:
    """A project folder: the tiny 3-label dataset, a labelflow.yaml with relative store paths, and a
    DAGSTER_HOME with telemetry off. ``llm_api_base``: an OpenAI-compatible server (e.g. a running
    :class:`FakeOpenAI`) as the project's expert instead of the local model. ``dataset_options``: more
    settings of the dataset's labelflow.yaml entry (e.g. an ``inbox``)."""
    root = Path(root)
    folder = root / "datasets" / dataset
    write_csv(folder / "train.csv", TINY_TRAIN, ["text", "label"])
    write_csv(folder / "test.csv", TINY_TEST, ["text", "label"])
    write_csv(folder / "unlabeled.csv", TINY_POOL, ["text"])
    write_csv(folder / "labels.csv", [("refund", "The customer asks for their money back.")], ["label", "description"])
    cfg = {
        "stores": dict(TEMP_STORES),
        "llm": (
            {"model": "openai/fake", "api_base": llm_api_base, "api_key_env": FAKE_KEY_ENV, "timeout_s": 10, "max_retries": 1}
            if llm_api_base
            else {"model": "local"}
        ),
        "datasets": [{"name": dataset, "path": f"datasets/{dataset}", "task": "multiclass", **(dataset_options or {})}],
    }
    config_path = root / "labelflow.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return UIProject(root=root.resolve(), config_path=config_path.resolve(), dagster_home=home.resolve(), dataset=dataset)


def materialise_all(project: UIProject, times: int = 1) -> list[str]:
    """Materialise every asset of the dataset in-process on the project's own Dagster instance (so the UI
    shows the history), ``times`` times; returns the run ids."""

    from labelflow.defs.factory import build_definitions

    old = {k: os.environ.get(k) for k in [*OFFLINE_ENV, FAKE_KEY_ENV]}
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault(FAKE_KEY_ENV, "not-a-real-key")
    try:
        defs = build_definitions(project.config())
        keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == project.dataset]
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
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
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


def launch_dagster(project: UIProject, log_dir: Path) -> Server:
    """Start `dagster dev -m labelflow.definitions` on 127.0.0.1 (returns at once; see :func:`wait_dagster`)."""
    port = free_port()
    return Server(
        "dagster-dev",
        [str(VENV_BIN / "dagster"), "dev", "-m", "labelflow.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=project.env(),
        cwd=project.root,
        log_dir=log_dir,
        port=port,
    ).start()


LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class CodeLocationError(RuntimeError):
    pass


def location_errors(base_url: str) -> list[str]:
    """Load errors of the webserver's code locations (empty when all loaded)."""
    ws = graphql(base_url, LOCATIONS_QUERY)["workspaceOrError"]
    return [
        f"{e['name']}: {e['locationOrLoadError']['message']}"
        for e in ws.get("locationEntries", [])
        if (e.get("locationOrLoadError") or {}).get("__typename") == "PythonError"
    ]


def wait_dagster(server: Server, project: UIProject, timeout: float = 180.0) -> Server:
    """Wait until GraphQL lists the dataset's foundation assets; stops the server if it does not, and
    fails at once when the code location does not load (the definitions are broken)."""
    wanted = {(project.dataset, n) for n in FOUNDATION}
    errors: list[str] = []

    def ready() -> bool:
        errors[:] = location_errors(server.url)
        if errors:
            return True
        return wanted <= asset_keys(server.url)

    try:
        server.wait_until(ready, timeout, "serving the asset graph")
        if errors:
            raise CodeLocationError("dagster dev could not load the definitions:\n" + "\n".join(errors))
    except BaseException:
        server.stop()
        raise
    return server


def start_dagster(project: UIProject, log_dir: Path, timeout: float = 180.0) -> Server:
    """`dagster dev` on 127.0.0.1, returned once it serves the graph. The caller must call ``stop()``."""
    return wait_dagster(launch_dagster(project, log_dir), project, timeout)


def launch_mlflow_ui(project: UIProject, log_dir: Path) -> Server:
    """Start `mlflow ui` on the project's sqlite store (returns at once; see :func:`wait_mlflow_ui`)."""
    cfg = project.config()
    port = free_port()
    return Server(
        "mlflow-ui",
        [
            str(VENV_BIN / "mlflow"),
            "ui",
            "--backend-store-uri",
            cfg.mlflow_tracking_uri,
            "--default-artifact-root",
            str(cfg.mlflow_artifacts),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=project.env(),
        cwd=project.root,
        log_dir=log_dir,
        port=port,
    ).start()


def wait_mlflow_ui(server: Server, timeout: float = 180.0) -> Server:
    """Wait until `mlflow ui` answers /health; stops the server if it does not."""

    def ready() -> bool:
        status, _ = http_get(f"{server.url}/health")
        return status == 200

    try:
        server.wait_until(ready, timeout, "answering /health")
    except BaseException:
        server.stop()
        raise
    return server


def start_mlflow_ui(project: UIProject, log_dir: Path, timeout: float = 180.0) -> Server:
    """`mlflow ui` on the project's sqlite store, returned once it answers HTTP."""
    return wait_mlflow_ui(launch_mlflow_ui(project, log_dir), timeout)
