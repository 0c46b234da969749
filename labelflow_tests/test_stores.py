"""The stores stay consistent: the project lock (one writer at a time, a clear message for the second),
atomic table writes (a failed write leaves the previous table; ingest outputs commit together), model
files checked by sha256, and an LLM cache that never holds its file open between operations."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from labelflow.defs.io import ModelIOManager, WarehouseIOManager
from labelflow.lock import ProjectLock, holder
from labelflow.modelstore import ModelIntegrityError, file_sha256, load_model, save_model

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")
IN_USE = "data/warehouse.duckdb is in use by run {run} (pid {pid}) since "


def _lock(root: Path, run_id: str, wait_s: float = 0.0) -> ProjectLock:
    return ProjectLock(root / "data" / ".labelflow.lock", run_id=run_id, resource="data/warehouse.duckdb", wait_s=wait_s)


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------------------------------ project lock
def test_second_process_gets_in_use_message_within_wait(tmp_path):
    with _lock(tmp_path, "run-aaaa1111"):
        t0 = time.perf_counter()
        child = _child(f"""
            import time
            from pathlib import Path
            from labelflow.lock import LockHeld, ProjectLock
            t0 = time.perf_counter()
            try:
                ProjectLock(Path({str(tmp_path)!r}) / "data" / ".labelflow.lock", run_id="run-bbbb2222",
                            resource="data/warehouse.duckdb", wait_s=1.0).acquire()
                print("ACQUIRED")
            except LockHeld as exc:
                print(f"{{time.perf_counter() - t0:.2f}}")
                print(exc)
            """)
        elapsed = time.perf_counter() - t0
    out = child.stdout.strip().splitlines()
    assert "ACQUIRED" not in child.stdout, child.stdout + child.stderr
    waited = float(out[0])
    assert 0.9 <= waited < 3.0, f"waited {waited:.2f} s for a 1 s lock wait"
    assert out[1].startswith(IN_USE.format(run="run-aaaa1111", pid=os.getpid())), out[1]
    assert out[1].endswith(" UTC"), out[1]
    assert elapsed < 60
    # once released, another process takes it at once
    child = _child(f"""
        from pathlib import Path
        from labelflow.lock import ProjectLock
        with ProjectLock(Path({str(tmp_path)!r}) / "data" / ".labelflow.lock", run_id="run-cccc", resource="x", wait_s=0):
            print("ACQUIRED")
        """)
    assert child.stdout.strip() == "ACQUIRED", child.stderr


def test_lock_is_reentrant_in_process_and_shared_by_one_runs_processes(tmp_path):
    outer = _lock(tmp_path, "demo-1")
    with outer:
        with _lock(tmp_path, "another-run-in-this-process"):  # the demo's in-process runs
            assert holder(tmp_path / "data" / ".labelflow.lock").run_id == "demo-1"
        # still held after the nested release: another process of another run is refused
        child = _child(f"""
            from pathlib import Path
            from labelflow.lock import LockHeld, ProjectLock
            lock = Path({str(tmp_path)!r}) / "data" / ".labelflow.lock"
            try:
                ProjectLock(lock, run_id="other", resource="r", wait_s=0).acquire(); print("ACQUIRED other")
            except LockHeld:
                print("REFUSED other")
            with ProjectLock(lock, run_id="demo-1", resource="r", wait_s=0):  # a step process of the same run
                print("ACQUIRED same-run")
            """)
        assert child.stdout.split("\n")[:2] == ["REFUSED other", "ACQUIRED same-run"], child.stdout + child.stderr
    assert holder(tmp_path / "data" / ".labelflow.lock") is None


def test_a_dagster_run_waits_for_the_lock_then_fails_with_the_holder(tmp_path):
    """The run-level hook: the warehouse IO manager takes the lock for the whole run."""
    db = tmp_path / "data" / "warehouse.duckdb"
    with _lock(tmp_path, "run-holder-42"):
        child = _child(f"""
            import dagster as dg, pandas as pd
            from labelflow.defs.io import WarehouseIOManager

            @dg.asset(key=["ds", "t"])
            def t() -> pd.DataFrame:
                return pd.DataFrame({{"a": [1]}})

            io = WarehouseIOManager(database={str(db)!r}, lock_path={str(db.parent / ".labelflow.lock")!r},
                                    lock_resource="data/warehouse.duckdb", lock_wait_s=1.0)
            from labelflow.cli import user_error
            try:
                dg.materialize([t], resources={{"io_manager": io}})
                print("SUCCESS")
            except Exception as exc:  # what the CLI shows: the user error behind Dagster's wrapper
                print("FAILED")
                print(type(user_error(exc)).__name__, user_error(exc))
            """)
    assert "FAILED" in child.stdout, child.stdout + child.stderr
    assert "LockHeld " + IN_USE.format(run="run-holder-42", pid=os.getpid()) in child.stdout, child.stdout + child.stderr
    assert (
        not db.exists()
        or "t"
        not in duckdb.connect(str(db), read_only=True).execute("select table_name from information_schema.tables").fetchall()
    )


# ------------------------------------------------------------------------------------------ atomic writes
class _Unconvertible:
    def __str__(self):
        raise RuntimeError("this value cannot be converted")

    __repr__ = __str__


def _io(tmp_path: Path) -> WarehouseIOManager:
    return WarehouseIOManager(database=str(tmp_path / "data" / "warehouse.duckdb"))


def _rows(tmp_path: Path, table: str) -> list:
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(f'select * from "ds"."{table}" order by 1').fetchall()
    finally:
        con.close()


def test_failed_table_write_leaves_previous_table_intact(tmp_path):
    (tmp_path / "data").mkdir()
    good = pd.DataFrame({"id": ["a", "b"], "label": ["x", "y"]})
    bad = pd.DataFrame({"id": ["c", "d"], "label": [_Unconvertible(), _Unconvertible()]})
    frames = iter([good, bad])

    @dg.asset(key=["ds", "labels"])
    def labels() -> pd.DataFrame:
        return next(frames)

    assert dg.materialize([labels], resources={"io_manager": _io(tmp_path)}).success
    assert _rows(tmp_path, "labels") == [("a", "x"), ("b", "y")]
    result = dg.materialize([labels], resources={"io_manager": _io(tmp_path)}, raise_on_error=False)
    assert not result.success
    assert _rows(tmp_path, "labels") == [("a", "x"), ("b", "y")], "a failed write must not empty or change the table"


def test_multi_output_step_commits_all_tables_together(tmp_path):
    (tmp_path / "data").mkdir()
    state = {"round": 0}

    @dg.multi_asset(
        outs={
            "seeds": dg.AssetOut(key=["ds", "seeds"]),
            "pool": dg.AssetOut(key=["ds", "pool"]),
            "gold": dg.AssetOut(key=["ds", "gold"]),
        },
        can_subset=False,
    )
    def ingest():
        r = state["round"]
        yield dg.Output(pd.DataFrame({"id": [f"s{r}"]}), "seeds")
        yield dg.Output(pd.DataFrame({"id": [f"p{r}"]}), "pool")
        if r == 1:
            raise RuntimeError("the step dies before its last output")
        bad = r == 2
        yield dg.Output(pd.DataFrame({"id": [_Unconvertible() if bad else f"g{r}"]}), "gold")

    assert dg.materialize([ingest], resources={"io_manager": _io(tmp_path)}).success
    before = {t: _rows(tmp_path, t) for t in ("seeds", "pool", "gold")}
    assert before == {"seeds": [("s0",)], "pool": [("p0",)], "gold": [("g0",)]}
    for r in (1, 2):  # dies between outputs; the last output's write fails
        state["round"] = r
        assert not dg.materialize([ingest], resources={"io_manager": _io(tmp_path)}, raise_on_error=False).success
        assert {t: _rows(tmp_path, t) for t in before} == before, f"round {r}: a partial ingest changed a table"
        assert _tables(tmp_path) == {"seeds", "pool", "gold"}, "staged tables of a failed step are dropped"
    state["round"] = 3
    assert dg.materialize([ingest], resources={"io_manager": _io(tmp_path)}).success
    assert {t: _rows(tmp_path, t) for t in before} == {"seeds": [("s3",)], "pool": [("p3",)], "gold": [("g3",)]}
    assert _tables(tmp_path) == {"seeds", "pool", "gold"}, "no staging table may outlive a successful commit"


def _tables(tmp_path: Path) -> set[str]:
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    finally:
        con.close()


def test_asset_with_a_check_is_written_at_once(tmp_path):
    """Asset-check outputs share the step but are not tables: the asset's table is written directly."""
    (tmp_path / "data").mkdir()

    @dg.asset(key=["ds", "pilot"], check_specs=[dg.AssetCheckSpec("ok", asset=dg.AssetKey(["ds", "pilot"]))])
    def pilot():
        yield dg.Output(pd.DataFrame({"accuracy": [0.9]}))
        yield dg.AssetCheckResult(check_name="ok", passed=True)

    assert dg.materialize([pilot], resources={"io_manager": _io(tmp_path)}).success
    assert _rows(tmp_path, "pilot") == [(0.9,)]


def test_identifiers_are_quoted_and_empty_frames_stored(tmp_path):
    (tmp_path / "data").mkdir()

    @dg.asset(key=["ds", "select"])  # a keyword as a table name
    def select() -> pd.DataFrame:
        return pd.DataFrame({"id": pd.Series([], dtype=object), "order": pd.Series([], dtype=object)})

    @dg.asset(key=["ds", "after"])
    def after(select: pd.DataFrame) -> pd.DataFrame:
        return select.assign(n=len(select))

    assert dg.materialize([select, after], resources={"io_manager": _io(tmp_path)}).success
    assert _rows(tmp_path, "select") == []


# ------------------------------------------------------------------------------------------ model files
def _fitted():
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
    return LogisticRegression().fit(X, ["a", "b", "a", "b"])


def _tamper_same_size(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_model_file_roundtrip_and_tampered_file_rejected(tmp_path):
    path = tmp_path / "models" / "ds" / "run1.joblib"
    digest = save_model(_fitted(), path)
    assert digest == file_sha256(path)
    assert list(load_model(path, digest).classes_) == ["a", "b"]
    assert not list(path.parent.glob(".*.tmp")), "no temporary file is left behind"
    _tamper_same_size(path)
    with pytest.raises(ModelIntegrityError, match="changed after it was written"):
        load_model(path, digest)
    with pytest.raises(ModelIntegrityError, match="changed after it was written"):
        load_model(path)  # against the sha256 recorded beside the file


def test_model_io_manager_one_file_per_run_and_checked_loads(tmp_path):
    (tmp_path / "data").mkdir()

    @dg.asset(key=["ds", "svm_model"], io_manager_key="model_io_manager")
    def svm_model():
        return _fitted()

    @dg.asset(key=["ds", "predictions"])
    def predictions(svm_model) -> pd.DataFrame:
        return pd.DataFrame({"label": svm_model.predict(np.array([[0.0, 1.0]]))})

    resources = {"io_manager": _io(tmp_path), "model_io_manager": ModelIOManager(models_dir=str(tmp_path / "models"))}
    instance = dg.DagsterInstance.ephemeral()
    runs = [dg.materialize([svm_model, predictions], resources=resources, instance=instance) for _ in range(2)]
    assert all(r.success for r in runs)
    meta = instance.get_latest_materialization_event(dg.AssetKey(["ds", "svm_model"])).asset_materialization.metadata
    path = Path(meta["model_path"].value)
    assert path == tmp_path / "models" / "ds" / f"{runs[1].run_id}.joblib"
    assert meta["model_sha256"].value == file_sha256(path)
    assert (tmp_path / "models" / "ds" / f"{runs[0].run_id}.joblib").exists(), "each run keeps its own model file"
    _tamper_same_size(path)
    result = dg.materialize(
        [svm_model, predictions],
        resources=resources,
        instance=instance,
        selection=[dg.AssetKey(["ds", "predictions"])],
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "changed after it was written" in str(failure.event_specific_data.error.to_string())


# ------------------------------------------------------------------------------------------ LLM cache
def test_llm_cache_is_shared_by_processes_while_held_open(tmp_path):
    from labelflow.llm.cache import CachedResponse, ResponseCache

    cache = ResponseCache(tmp_path / "llm_cache.sqlite")
    cache.put("k1", "m", CachedResponse("yes", None, 10, 1, 0.0, 0.1))
    # another process reads and writes the same file while this cache object is alive and open
    child = _child(f"""
        from labelflow.llm.cache import CachedResponse, ResponseCache
        c = ResponseCache({str(tmp_path / "llm_cache.sqlite")!r}, busy_timeout_s=5)
        assert c.get("k1").text == "yes"
        c.put("k2", "m", CachedResponse("no", [["no", [["no", -0.1]]]], 11, 1, 0.0, 0.2))
        print("WROTE")
        """)
    assert child.stdout.strip() == "WROTE", child.stderr
    assert cache.get("k2").logprobs == [["no", [["no", -0.1]]]] and len(cache) == 2
    assert set(cache.get_many(["k1", "k2", "missing"])) == {"k1", "k2"}
    with pytest.raises(RuntimeError):  # a batch that fails half-way writes nothing
        with cache.session():
            cache.put("k3", "m", CachedResponse("yes", None, 1, 1, 0.0, 0.0))
            raise RuntimeError("crash in the batch")
    assert cache.get("k3") is None
    with cache.session():
        cache.put("k3", "m", CachedResponse("yes", None, 1, 1, 0.0, 0.0))
    assert cache.get("k3").text == "yes"


def test_llm_cache_imports_an_earlier_duckdb_cache_once(tmp_path):
    from labelflow.llm.cache import ResponseCache

    legacy = tmp_path / "llm_cache.duckdb"
    con = duckdb.connect(str(legacy))
    con.execute(
        "CREATE TABLE llm_responses (key VARCHAR PRIMARY KEY, model VARCHAR, text VARCHAR, logprobs VARCHAR, "
        "prompt_tokens BIGINT, completion_tokens BIGINT, cost DOUBLE, latency_s DOUBLE, created TIMESTAMP)"
    )
    con.execute("INSERT INTO llm_responses VALUES ('old', 'm', 'yes', NULL, 5, 1, 0.25, 0.5, current_timestamp)")
    con.close()
    cache = ResponseCache(legacy)  # the configured name of earlier versions
    assert cache.path == tmp_path / "llm_cache.sqlite"
    hit = cache.get("old")
    assert (hit.text, hit.prompt_tokens, hit.cost) == ("yes", 5, 0.25)


def test_lock_wait_from_config_and_environment(tmp_path, monkeypatch):
    from labelflow.config import ConfigError, config_from_dict
    from labelflow.lock import for_project, wait_seconds

    monkeypatch.delenv("LABELFLOW_LOCK_WAIT_S", raising=False)
    assert config_from_dict({}, tmp_path).lock_wait_s == 60.0
    cfg = config_from_dict({"stores": {"lock_wait_s": 5}}, tmp_path)
    assert cfg.lock_wait_s == 5.0 and for_project(cfg, command="labelflow demo").wait_s == 5.0
    assert for_project(cfg, command="labelflow demo").resource == "data/warehouse.duckdb"
    monkeypatch.setenv("LABELFLOW_LOCK_WAIT_S", "0.5")
    assert wait_seconds(cfg.lock_wait_s) == 0.5
    with pytest.raises(ConfigError, match="stores.lock_wait_s"):
        config_from_dict({"stores": {"lock_wait_s": "soon"}}, tmp_path)


# ------------------------------------------------------------------------------------------ fragments
def test_fragment_replace_is_atomic_for_readers_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    import threading

    from labelflow.fragments import FragmentStore

    store = FragmentStore(tmp_path / "tables")
    small = pd.DataFrame({"id": [f"a{i}" for i in range(10)], "text": "x"}).assign(day=pd.Timestamp("2026-11-18"))
    big = pd.DataFrame({"id": [f"b{i}" for i in range(50_000)], "text": "y" * 40}).assign(day=pd.Timestamp("2026-11-18"))
    store.write("ds", "t", "day", "2026-11-18", small, run_id="r1")
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(len(store.read("ds", "t")))
            except Exception as exc:  # noqa: BLE001 - e.g. a half-written file: recorded, then the test fails
                errors.append(repr(exc)[:200])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):  # replace back and forth while the reader reads
            store.write("ds", "t", "day", "2026-11-18", big if i % 2 == 0 else small, run_id=f"r{i}")
    finally:
        stop.set()
        t.join()
    assert not errors and seen <= {10, 50_000}, f"a reader saw a partial or doubled partition: {sorted(seen)} {errors[:3]}"
    import pyarrow.parquet as pq

    def disk_full(table, where, **kw):  # half a file, then the device is full
        Path(where).write_bytes(b"PAR1 half a fragment")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write("ds", "t", "day", "2026-11-18", big)
    monkeypatch.undo()
    assert sorted(store.read("ds", "t")["id"]) == sorted(small["id"]), "a failed write must leave the previous fragment"
    assert not list((tmp_path / "tables").rglob("*.tmp")), "no temporary file is left behind"
    assert store.partitions("ds", "t") == ["2026-11-18"]
    with pytest.raises(ValueError, match="cannot name a fragment folder"):
        store.write("ds", "t", "day", "../escape", small)


def _daily_assets():
    daily = dg.DailyPartitionsDefinition(start_date="2026-11-01")

    @dg.asset(key=["ds", "texts"], partitions_def=daily, metadata={"partition_expr": "day"})
    def texts(context) -> pd.DataFrame:
        day = context.partition_key
        return pd.DataFrame({"id": [f"{day}-{i}" for i in range(3)], "text": "t"}).assign(day=pd.Timestamp(day))

    @dg.asset(key=["ds", "everything"])
    def everything(texts: pd.DataFrame) -> pd.DataFrame:
        return texts.assign(n=len(texts))

    return texts, everything


def _fragment_io(tmp_path: Path, **kw) -> WarehouseIOManager:
    return WarehouseIOManager(
        database=str(tmp_path / "data" / "warehouse.duckdb"), fragments_root=str(tmp_path / "data" / "tables"), **kw
    )


def test_partitions_are_fragments_behind_one_view_and_legacy_tables_move_in(tmp_path):
    from labelflow.commands.export import read_table

    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "warehouse.duckdb"
    con = duckdb.connect(str(db))  # what an earlier version left: the partitions inside the DuckDB file
    con.execute("CREATE SCHEMA ds")
    con.execute(
        "CREATE TABLE ds.texts AS SELECT 'old-' || i AS id, 't' AS text, TIMESTAMP '2026-11-17' AS day FROM range(2) r(i)"
    )
    con.close()
    texts, everything = _daily_assets()
    instance = dg.DagsterInstance.ephemeral()
    for day in ("2026-11-18", "2026-11-19", "2026-11-18"):  # the 18th twice: replaced, not duplicated
        assert dg.materialize(
            [texts], partition_key=day, resources={"io_manager": _fragment_io(tmp_path)}, instance=instance
        ).success
    assert dg.materialize(
        [texts, everything], selection=[everything.key], resources={"io_manager": _fragment_io(tmp_path)}
    ).success
    assert sorted(r[0] for r in _rows(tmp_path, "everything")) == sorted(
        ["old-0", "old-1"] + [f"{d}-{i}" for d in ("2026-11-18", "2026-11-19") for i in range(3)]
    )
    con = duckdb.connect(str(db), read_only=True)
    kinds = dict(con.execute("select table_name, table_type from information_schema.tables where table_schema='ds'").fetchall())
    per_day = dict(con.execute("select strftime(day, '%Y-%m-%d'), count(*) from ds.texts group by 1").fetchall())
    con.close()
    assert kinds == {"texts": "VIEW", "everything": "BASE TABLE"}
    assert per_day == {"2026-11-17": 2, "2026-11-18": 3, "2026-11-19": 3}
    files = sorted(p.relative_to(tmp_path / "data" / "tables") for p in (tmp_path / "data" / "tables").rglob("*.parquet"))
    assert [str(f) for f in files] == [f"ds/texts/day=2026-11-{d}/part.parquet" for d in (17, 18, 19)]
    cfg = tmp_path / "labelflow.yaml"
    cfg.write_text("stores:\n  warehouse: data/warehouse.duckdb\ndatasets:\n  - {name: ds, path: data}\n")
    assert len(read_table("ds", "texts", str(cfg))) == 8  # `labelflow export` reads the view


def test_partition_run_takes_the_project_lock_only_for_its_unpartitioned_steps(tmp_path, monkeypatch):
    """While another run holds the project lock, a run of one partition writes its fragments; its
    unpartitioned step waits LABELFLOW_PARTITION_WAIT_S for the lock and then fails with the holder."""
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("LABELFLOW_PARTITION_WAIT_S", "1")
    lock = str(tmp_path / "data" / ".labelflow.lock")
    io = _fragment_io(tmp_path, lock_path=lock, lock_resource="data/warehouse.duckdb", lock_wait_s=0)
    texts, everything = _daily_assets()
    child = subprocess.Popen(
        [PY, "-c", f"from labelflow.lock import ProjectLock\nimport sys, time\n"
         f"with ProjectLock({lock!r}, run_id='run-retrain-7', resource='r', wait_s=0):\n"
         "    print('HELD', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "HELD"
        res = dg.materialize([texts], partition_key="2026-11-18", resources={"io_manager": io})
        assert res.success, "a partition's own steps do not need the project lock"
        res = dg.materialize([texts, everything], partition_key="2026-11-19", resources={"io_manager": io}, raise_on_error=False)
    finally:
        child.kill()
        child.wait()
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "ds__everything"
    assert "data/warehouse.duckdb is in use by run run-retrain-7" in failure.event_specific_data.error.to_string()
    assert [e.step_key for e in res.all_events if e.event_type_value == "STEP_SUCCESS"] == ["ds__texts"]
    from labelflow.fragments import FragmentStore

    assert FragmentStore(tmp_path / "data" / "tables").partitions("ds", "texts") == ["2026-11-18", "2026-11-19"]
    assert holder(lock) is None and holder(tmp_path / "data" / ".labelflow.locks" / "partition=2026-11-19.lock") is None


def test_partitioned_vectors_are_fragments_and_a_legacy_lancedb_table_moves_in(tmp_path):
    from labelflow.defs.vectors import EmbeddingIOManager
    from labelflow.embedding import EmbeddingIndex, VectorStore
    from labelflow.fragments import FragmentStore

    uri, root = tmp_path / "lancedb", tmp_path / "tables"
    old = pd.DataFrame({"id": ["o1", "o2"], "model": "m", "vector": list(np.eye(2, 3, dtype=np.float32)), "day": "2026-11-17"})
    VectorStore(uri).write("ds__vecs", old)  # what an earlier version kept: one LanceDB table for every day
    daily = dg.DailyPartitionsDefinition(start_date="2026-11-01")

    @dg.asset(key=["ds", "vecs"], io_manager_key="vectors_io_manager", partitions_def=daily, metadata={"partition_expr": "day"})
    def vecs(context):
        return EmbeddingIndex([f"{context.partition_key}-a"], np.ones((1, 3), np.float32), "m")

    @dg.asset(key=["ds", "all_vecs"], io_manager_key="vectors_io_manager")
    def all_vecs(vecs):
        return vecs

    res = {"vectors_io_manager": EmbeddingIOManager(lancedb_uri=str(uri), fragments_root=str(root))}
    for day in ("2026-11-18", "2026-11-18"):
        assert dg.materialize([vecs], partition_key=day, resources=res).success
    assert dg.materialize([vecs, all_vecs], selection=[all_vecs.key], resources=res).success
    assert sorted(VectorStore(uri).read("ds__all_vecs")["id"]) == ["2026-11-18-a", "o1", "o2"]
    assert FragmentStore(root).partitions("ds", "vecs") == ["2026-11-17", "2026-11-18"]
    assert not VectorStore(uri).has("ds__vecs"), "the legacy table is dropped once its days are fragments"
