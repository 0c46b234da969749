"""Scale benchmark helpers: synthetic labelled texts and a local Ray cluster of 1 CPU nodes on 127.0.0.1.

Synthetic texts: class ``topic_007`` texts carry its marker word ``w007`` among filler words (and, one
text in five, another class's marker too); the benchmark LLM (:mod:`labelflow.bench.fake_llm`) says
yes iff the asked label's marker is in the text.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILLER = (
    "account card payment order delivery refund password login transfer balance app phone email address "
    "charge fee limit statement branch loan rate cash machine pin code travel abroad currency exchange"
).split()


def marker(label: str) -> str:
    """The marker word of a synthetic class (``topic_007`` -> ``w007``)."""
    return "w" + label.rsplit("_", 1)[-1]


def synthetic_texts(n: int, classes: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) pairs over ``classes`` classes, texts unique."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        c = rng.randrange(classes)
        label = f"topic_{c:03d}"
        words = rng.sample(FILLER, rng.randint(5, 9)) + [marker(label)]
        if rng.random() < 0.2:
            words.append(marker(f"topic_{rng.randrange(classes):03d}"))
        rng.shuffle(words)
        text = " ".join(words) + f" ref {len(out)}"
        if text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def write_synthetic_dataset(
    folder: Path, pool: int, classes: int, seeds_per_class: int = 5, gold_per_class: int = 3, seed: int = 0
) -> Path:
    """A dataset folder (train.csv seeds, test.csv gold, unlabeled.csv pool, labels.csv descriptions)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = synthetic_texts(pool + classes * (seeds_per_class + gold_per_class) * 4, classes, seed)
    by_class: dict[str, list[str]] = {}
    for text, label in rows:
        by_class.setdefault(label, []).append(text)
    train, test, used = [], [], set()
    for c in range(classes):
        label = f"topic_{c:03d}"
        texts = by_class.get(label, [])
        if len(texts) < seeds_per_class + gold_per_class:
            raise ValueError(f"too few synthetic texts for {label}; ask for a larger pool")
        train += [(t, label) for t in texts[:seeds_per_class]]
        test += [(t, label) for t in texts[seeds_per_class : seeds_per_class + gold_per_class]]
        used.update(texts[: seeds_per_class + gold_per_class])
    unlabeled = [t for t, _ in rows if t not in used][:pool]

    def write(name, header, data):
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(data)

    write("train.csv", ["text", "label"], train)
    write("test.csv", ["text", "label"], test)
    write("unlabeled.csv", ["text"], [(t,) for t in unlabeled])
    write(
        "labels.csv",
        ["label", "description"],
        [(f"topic_{c:03d}", f"Texts that mention {marker(f'topic_{c:03d}')}.") for c in range(classes)],
    )
    return folder


class LocalRayCluster:
    """Ray nodes on 127.0.0.1, each ``ray start --block`` with 1 CPU, started and stopped by this object
    (only the processes it started are stopped: each node runs in its own process group).

        with LocalRayCluster(nodes=2) as cluster:
            os.environ["LABELFLOW_RAY_ADDRESS"] = cluster.address
    """

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, object_store_bytes: int = 200_000_000, dashboard: bool = False):
        self.n, self.cpus, self.store = nodes, cpus_per_node, object_store_bytes
        self.dashboard = dashboard  # the state API (ray.util.state) needs it: dashboard_url then set
        self.dashboard_url = ""
        self.procs: list[subprocess.Popen] = []
        self.temp_dir = tempfile.mkdtemp(prefix="lfray", dir="/tmp")  # short: Ray's socket paths are limited
        self.address = ""

    def _ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def _start(self, args: list[str]) -> None:
        log = open(Path(self.temp_dir) / f"node{len(self.procs)}.log", "wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs.append(
            subprocess.Popen(
                [
                    self._ray(),
                    "start",
                    "--block",
                    "--num-cpus",
                    str(self.cpus),
                    "--object-store-memory",
                    str(self.store),
                    "--disable-usage-stats",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        )

    def start(self, timeout_s: float = 180.0) -> "LocalRayCluster":
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        dash = ["--include-dashboard", "false"]
        if self.dashboard:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                dport = sock.getsockname()[1]
            dash = ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dport)]
            self.dashboard_url = f"http://127.0.0.1:{dport}"
        self._start(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", *dash, "--temp-dir", self.temp_dir])
        self._wait_port(port, timeout_s)
        for _ in range(self.n - 1):
            self.add_node(timeout_s)
        return self

    def add_node(self, timeout_s: float = 180.0) -> None:
        """One more 1-CPU node; returns when the cluster reports it alive."""
        self._start(["--address", self.address, "--node-ip-address", "127.0.0.1"])
        self.wait_nodes(len(self.procs), timeout_s)

    def _wait_port(self, port: int, timeout_s: float) -> None:
        import socket

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"Ray head did not open port {port} within {timeout_s:.0f} s (logs: {self.temp_dir})")

    def _check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log = (Path(self.temp_dir) / f"node{i}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ray node {i} exited with {p.returncode}: {log}")

    def wait_nodes(self, n: int, timeout_s: float = 180.0) -> None:
        """Connect this process to the cluster (once) and wait until ``n`` nodes are alive."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, namespace="labelflow", log_to_driver=False)
        deadline = time.monotonic() + timeout_s
        while sum(1 for node in ray.nodes() if node.get("Alive")) < n:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} Ray nodes not alive within {timeout_s:.0f} s (logs: {self.temp_dir})")
            time.sleep(0.5)

    def stop(self) -> None:
        """Disconnect, then stop the nodes this object started (newest first): SIGTERM to each ``ray
        start --block``, which stops its node; its process group is killed if it does not exit."""
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the node's own group: raylet, workers, store
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the benchmark: labelflow bench --method scale --compute local|ray --texts N --classes C -------------------

EXTRAPOLATE_TEXTS, EXTRAPOLATE_CLASSES = 10_000_000, 1000
QUEUE_SHARE, QUESTIONS_PER_QUEUED = 0.10, 2.0  # stated assumptions of the extrapolation


def add_arguments(parser) -> None:
    g = parser.add_argument_group("scale")
    g.add_argument(
        "--compute",
        default="local",
        choices=["local", "ray"],
        help="scale: local (this process, compared with the direct library calls) or ray (a local cluster "
        "of 1-CPU nodes started for the run, measured with 1 and 2 nodes)",
    )
    g.add_argument("--texts", type=int, default=2048, help="scale: synthetic texts to embed and label")
    g.add_argument("--classes", type=int, default=20, help="scale: synthetic classes")
    g.add_argument("--llm-questions", type=int, default=320, help="scale: yes/no questions of the LLM stage")
    g.add_argument("--llm-latency-ms", type=float, default=200.0, help="scale: the test LLM server's latency per request")
    g.add_argument("--llm-requests-per-node", type=int, default=8, help="scale: LLM requests in flight per node")
    g.add_argument("--shard-size", type=int, default=512, help="scale: texts per shard (a multiple of 256)")
    g.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="scale: measure the configurations this many times, interleaved; the fastest of each is reported",
    )


class _RssSampler:
    """Peak resident memory per process (this one and every process under the given parents), sampled
    every 0.5 s in a thread; the process name is Ray's (``ray::_Encoder.encode``...) or the program's."""

    def __init__(self, parents: list[int]):
        import threading

        self.parents, self.peak = parents, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            procs = [psutil.Process()]
            for pid in self.parents:
                try:
                    procs += psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    pass
            for p in procs:
                try:
                    name = p.name() if p.pid != os.getpid() else "driver"
                    cmd = " ".join(p.cmdline()[:1])
                    # ray::_EncoderImpl.encode -> ray::_EncoderImpl (Ray retitles a worker per method)
                    kind = "ray::" + cmd.split()[0][5:].split(":")[-1].split(".")[0] if cmd.startswith("ray::") else name
                    self.peak[(kind, p.pid)] = max(self.peak.get((kind, p.pid), 0), p.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(0.5)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_kind(self) -> dict[str, float]:
        """Largest peak RSS (MiB) of any one process of each kind."""
        out: dict[str, float] = {}
        for (kind, _), rss in self.peak.items():
            out[kind] = max(out.get(kind, 0.0), rss / 2**20)
        return out


def _stages(
    backend,
    texts: list[str],
    seeds: list[tuple[str, str]],
    questions: list[tuple[str, str]],
    api_base: str,
    model: str,
    concurrency: int,
    server,
) -> tuple[list[dict], dict]:
    """Embedding, labelling functions and LLM questions through ``backend`` (None = the direct library
    calls, as before compute backends); one row per stage."""
    import numpy as np

    from labelflow import weak
    from labelflow.compute import apply_lfs_sharded
    from labelflow.config import LLMConfig
    from labelflow.embedding import Embedder
    from labelflow.expert import ValidationItem, make_expert

    rows, extra = [], {}
    embedder = Embedder(model)
    enc = backend.encoder(embedder) if backend is not None else embedder
    labels = sorted({lab for _, lab in seeds})
    seed_X = embedder.encode([t for t, _ in seeds])  # small, in the driver
    seed_sets = [[lab] for _, lab in seeds]
    desc_X = embedder.encode([f"{lab}: texts that mention {marker(lab)}" for lab in labels])
    enc.encode(texts[:8])  # warm-up, not timed (with ray: the encoder actors are made again per call)
    t0 = time.perf_counter()
    X = enc.encode(texts)
    rows.append({"stage": "embedding", "items": len(texts), "wall_s": time.perf_counter() - t0})
    ids = [f"t{i}" for i in range(len(texts))]
    t0 = time.perf_counter()
    if backend is None:
        lfs = weak.standard_lfs(None, labels, seed_X, seed_sets, desc_X)
        votes, _ = weak.apply_lfs(lfs, ids, texts, X, labels=labels)
    else:
        votes, _ = apply_lfs_sharded(backend, None, labels, seed_X, seed_sets, desc_X, ids, texts, X)
    rows.append({"stage": "labelling functions", "items": len(texts), "wall_s": time.perf_counter() - t0})
    extra["votes"] = len(votes)
    extra["vectors_checksum"] = float(np.round(X.astype(np.float64).sum(), 3))
    cfg = LLMConfig(model="openai/bench", api_base=api_base, concurrency=concurrency, max_retries=2)
    expert = make_expert(cfg, cache_path=None)
    if backend is not None:
        expert = backend.attach_llm(expert, cfg)
    items = [ValidationItem(text=t, label=lab, description=f"texts that mention {marker(lab)}") for t, lab in questions]
    # warm-up, not timed: every worker imports litellm and opens its connections (distinct texts: no cache hits)
    expert.validate([ValidationItem(text=f"warm up {i}", label=questions[0][1]) for i in range(2 * max(concurrency, 1))])
    calls_before = expert.usage.calls
    if backend is not None and hasattr(backend, "llm_stats"):
        backend.reset_llm_stats(expert)
    server.reset()
    t0 = time.perf_counter()
    verdicts = expert.validate(items)
    rows.append({"stage": "LLM questions", "items": len(items), "wall_s": time.perf_counter() - t0})
    extra["accepted"] = sum(v.accept for v in verdicts)
    extra["llm_calls"] = expert.usage.calls - calls_before
    extra["expert_threads"] = expert.concurrency
    if backend is not None and hasattr(backend, "llm_stats"):
        extra["limiter"] = backend.llm_stats(expert)
    expert.close()
    return rows, extra


def run(args) -> list:
    from labelflow.bench.common import emit

    texts, seeds, labels, questions = _workload(args)
    per_node = args.llm_requests_per_node
    print(
        f"scale bench: {len(texts)} texts, {len(labels)} classes, {len(questions)} LLM questions at "
        f"{args.llm_latency_ms:.0f} ms, compute {args.compute}",
        flush=True,
    )
    results, notes = _measure_all(args, texts, seeds, questions)
    df = _table(results)
    base = df["config"].iloc[0]
    out = args.out
    emit(
        df.fillna("").astype(object),
        out,
        f"scale_{args.compute}",
        f"Scale: {len(texts)} synthetic texts x {len(labels)} classes, LLM latency {args.llm_latency_ms:.0f} ms, "
        f"compute {args.compute}",
        note="\n".join(
            f"{c}: peak RSS per process (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(p.items()))
            for c, p in notes.items()
        )
        + f"\nthroughput_vs_first: throughput over the first configuration's ({base}), same run"
        + (f"; fastest of {args.repeats} interleaved repeats." if args.repeats > 1 else "."),
    )
    extra = _extrapolate(df, len(labels), args.llm_latency_ms, per_node)
    emit(
        extra.astype(object),
        out,
        f"scale_extrapolation_{args.compute}",
        f"Extrapolation to {EXTRAPOLATE_TEXTS:,} texts x {EXTRAPOLATE_CLASSES} classes on K nodes (from {base})",
        note=_ASSUMPTIONS.format(c=len(labels), q=QUEUE_SHARE, k=QUESTIONS_PER_QUEUED, lat=args.llm_latency_ms, r=per_node),
    )
    return [df, extra]


def _workload(args):
    """``--texts`` synthetic pool texts, 5 seeds per class, the sorted labels and ``--llm-questions``
    (text, label) questions, half of them with the text's own label."""
    import random

    n, c = args.texts, args.classes
    data = synthetic_texts(n + c * 5, c, seed=0)
    seeds_by: dict[str, list] = {}
    for t, lab in data[n:]:
        seeds_by.setdefault(lab, []).append(t)
    seeds = [(t, lab) for lab, ts in seeds_by.items() for t in ts[:5]]
    texts = [t for t, _ in data[:n]]
    rng = random.Random(1)
    labels = sorted(seeds_by)
    questions = [(t, lab if rng.random() < 0.5 else rng.choice(labels)) for t, lab in data[: args.llm_questions]]
    return texts, seeds, labels, questions


def _measure_all(args, texts, seeds, questions) -> tuple[list[dict], dict]:
    """Every configuration's stages (``--repeats`` times, interleaved) against one fake LLM server:
    a row per configuration, repeat and stage, and the peak RSS per process kind per configuration."""
    from labelflow import compute as lf_compute
    from labelflow.bench.fake_llm import FakeLLM

    per_node = args.llm_requests_per_node
    results, notes = [], {}
    with FakeLLM(latency_s=args.llm_latency_ms / 1000) as srv:

        def measure(config: str, backend, nodes: int, parents: list[int]):
            with _RssSampler(parents) as rss:
                rows, extra = _stages(backend, texts, seeds, questions, srv.api_base, args.embedding_model, per_node * nodes, srv)
            for r in rows:
                r.update(config=config, nodes=nodes, throughput_per_s=r["items"] / r["wall_s"])
                if r["stage"] == "LLM questions":
                    r.update(
                        llm_requests=int(srv.count),
                        peak_in_flight_server=srv.peak_in_flight,
                        peak_in_flight_limiter=extra.get("limiter", {}).get("peak_in_flight", ""),
                    )
            peaks = notes.setdefault(config, {})
            for k, v in rss.by_kind().items():
                peaks[k] = max(peaks.get(k, 0.0), v)
            results.extend(rows)
            print(
                f"{config}: "
                + "; ".join(f"{r['stage']} {r['wall_s']:.1f}s" for r in rows)
                + f"; votes {extra['votes']}, accepted {extra['accepted']}, vectors sum {extra['vectors_checksum']}",
                flush=True,
            )
            return extra

        if args.compute == "local":
            for _ in range(max(args.repeats, 1)):  # interleaved, so both see the same machine load
                measure("direct library calls (before)", None, 1, [])
                measure("compute: local", lf_compute.LocalBackend(args.shard_size), 1, [])
        else:
            with LocalRayCluster(nodes=1) as cluster:
                cluster.wait_nodes(1)
                for nodes in (1, 2):
                    if nodes == 2:
                        cluster.add_node()
                    backend = lf_compute.RayBackend(cluster.address, args.shard_size, per_node)
                    for _ in range(max(args.repeats, 1)):
                        measure(f"compute: ray, {nodes} node(s)", backend, nodes, [p.pid for p in cluster.procs])
                    backend.close()
    return results, notes


def _table(results: list[dict]):
    """The fastest of the repeats per configuration and stage (in the order measured), with the
    throughput over the first configuration's."""
    import pandas as pd

    results = (
        pd.DataFrame(results)
        .sort_values("wall_s")
        .drop_duplicates(["config", "stage"])
        .assign(
            _c=lambda d: d["config"].map({c: i for i, c in enumerate(dict.fromkeys(r["config"] for r in results))}),
            _s=lambda d: d["stage"].map({"embedding": 0, "labelling functions": 1, "LLM questions": 2}),
        )
        .sort_values(["_c", "_s"])
        .drop(columns=["_c", "_s"])
        .to_dict("records")
    )
    df = pd.DataFrame(results)[
        [
            "config",
            "nodes",
            "stage",
            "items",
            "wall_s",
            "throughput_per_s",
            *[col for col in ("llm_requests", "peak_in_flight_server", "peak_in_flight_limiter") if col in pd.DataFrame(results)],
        ]
    ]
    base = df["config"].iloc[0]
    ratio = []
    for _, r in df.iterrows():
        ref = df[(df["config"] == base) & (df["stage"] == r["stage"])]["throughput_per_s"].iloc[0]
        ratio.append(r["throughput_per_s"] / ref)
    df["throughput_vs_first"] = ratio
    return df.round({"wall_s": 2, "throughput_per_s": 1, "throughput_vs_first": 2})


_ASSUMPTIONS = (
    "Assumptions: per-node throughput as measured on one 1-CPU node of this machine for embedding and "
    "labelling functions; embedding cost per text does not depend on the classes; labelling-function cost "
    "per text grows linearly with the classes (centroid/description/kNN scores are products with per-class "
    "vectors), i.e. x {EXTRAPOLATE_CLASSES}/{c}; nodes add throughput linearly (shards are independent; "
    "the driver only gathers results); LLM questions = {q:.0%} of texts routed to the LLM x {k:g} questions "
    "each; an LLM node keeps {r} requests in flight at {lat:.0f} ms, and the endpoint (vLLM / provider) "
    "serves every node's requests without slowing down - in practice its rpm/tpm/concurrency cap is the "
    "limit, set in llm.rpm / llm.tpm / llm.concurrency. Training, routing and the DuckDB writes are not "
    "included. At a small --texts the measured costs include Ray's per-task start-up and the encoder "
    "actors' model loading (with ray), so the hours are an upper bound."
).replace("{EXTRAPOLATE_CLASSES}", str(EXTRAPOLATE_CLASSES))


def _extrapolate(df, classes: int, latency_ms: float, per_node: int):
    import pandas as pd

    first = df[df["config"] == df["config"].iloc[0]].set_index("stage")
    per_node_tput = {s: float(first.loc[s, "throughput_per_s"]) / max(int(first.loc[s, "nodes"]), 1) for s in first.index}
    emb_s = EXTRAPOLATE_TEXTS / per_node_tput["embedding"]
    lf_s = EXTRAPOLATE_TEXTS * (EXTRAPOLATE_CLASSES / classes) / per_node_tput["labelling functions"]
    questions = EXTRAPOLATE_TEXTS * QUEUE_SHARE * QUESTIONS_PER_QUEUED
    llm_s = questions / per_node_tput["LLM questions"]
    rows = []
    for k in (1, 4, 16, 64, 256):
        rows.append(
            {
                "nodes": k,
                "embedding_h": emb_s / k / 3600,
                "labelling_functions_h": lf_s / k / 3600,
                "llm_questions": int(questions),
                "llm_h": llm_s / k / 3600,
                "total_h": (emb_s + lf_s + llm_s) / k / 3600,
            }
        )
    return pd.DataFrame(rows).round(2)
