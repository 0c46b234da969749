"""compute: ray on a real 2-node Ray cluster on 127.0.0.1 (two `ray start` nodes with 1 CPU each, started
and stopped by the test): the whole graph of a few thousand synthetic texts gives the same labels,
metrics and LLM call count as compute: local, and both nodes ran tasks. Skipped without the ray extra."""

from __future__ import annotations

import dagster as dg
import duckdb
import pandas as pd
import pytest

from labelflow.bench.fake_llm import FakeLLM
from labelflow.bench.scale import LocalRayCluster, write_synthetic_dataset
from labelflow.config import ConfigError, config_from_dict
from labelflow_tests.project import TEMP_STORES

TABLES = {
    "weak_labels": ["id", "label"],
    "rac_labels": ["id", "label", "status"],
    "red_labels": ["id", "label"],
    "pool_predictions": ["id", "label"],
    "training_set": ["id", "label", "label_source"],
}


def _run(root, data, api_base, compute: dict):
    from labelflow import compute as lf_compute
    from labelflow.defs.factory import build_definitions

    raw = {
        "stores": dict(TEMP_STORES),
        "llm": {"model": "openai/bench", "api_base": api_base, "concurrency": 4},
        "compute": compute,
        "datasets": [
            {
                "name": "syn",
                "path": str(data),
                "pilot_size": 16,
                "llm_budget_calls": None,
                "routing": {"max_queue": 240},
                "red_top_k": 30,
                "red_max_rounds": 2,
            }
        ],
    }
    cfg = config_from_dict(raw, root)
    instance = dg.DagsterInstance.ephemeral()
    result = build_definitions(cfg).resolve_job_def("syn__all").execute_in_process(instance=instance)
    assert result.success
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        tables = {t: con.execute(f"select {', '.join(cols)} from syn.{t} order by id").df() for t, cols in TABLES.items()}
    finally:
        con.close()
    evaluation = instance.get_latest_materialization_event(dg.AssetKey(["syn", "evaluation"])).asset_materialization
    metrics = {k: v.value for k, v in evaluation.metadata.items() if isinstance(v.value, float)}
    lf_compute.shutdown() if compute["backend"] == "ray" else None
    return tables, metrics


def test_compute_config_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("LABELFLOW_COMPUTE", raising=False)
    monkeypatch.delenv("LABELFLOW_RAY_ADDRESS", raising=False)
    assert config_from_dict({}, tmp_path).compute.backend == "local"
    c = config_from_dict(
        {"compute": {"backend": "ray", "ray": {"address": "ray://head:10001", "shard_size": 512}}}, tmp_path
    ).compute
    assert (c.backend, c.address, c.shard_size) == ("ray", "ray://head:10001", 512)
    monkeypatch.setenv("LABELFLOW_COMPUTE", "ray")
    monkeypatch.setenv("LABELFLOW_RAY_ADDRESS", "10.0.0.5:6379")
    c = config_from_dict({}, tmp_path).compute
    assert (c.backend, c.address) == ("ray", "10.0.0.5:6379")
    monkeypatch.delenv("LABELFLOW_COMPUTE")
    monkeypatch.delenv("LABELFLOW_RAY_ADDRESS")
    for bad, words in [
        ({"backend": "dask"}, "compute.backend"),
        ({"ray": {"shard_size": 1000}}, "multiple of 256"),
        ({"ray": {"address": "nowhere"}}, "compute.ray.address"),
        ({"workers": 3}, "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=words):
            config_from_dict({"compute": bad}, tmp_path)


class _ShardedInProcess:
    """A backend that cuts shards like the Ray one but runs them here (checks the merge, not Ray)."""

    name, shard_size = "sharded", 256

    def map_shards(self, fn, items, shared=None):
        return [fn(item, shared) for item in items]


def test_sharded_labelling_functions_equal_one_call():
    import numpy as np

    from labelflow import weak
    from labelflow.compute import LocalBackend, apply_lfs_sharded

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    seed_X = rng.standard_normal((9, 16)).astype(np.float32)
    seed_X /= np.linalg.norm(seed_X, axis=1, keepdims=True)
    seed_sets = [[labels[i % 3]] for i in range(9)]
    desc_X = seed_X[:3]
    X = rng.standard_normal((700, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids, texts = [f"t{i}" for i in range(700)], [f"text {i}" for i in range(700)]
    lfs = weak.standard_lfs(None, labels, seed_X, seed_sets, desc_X)
    one, _ = weak.apply_lfs(lfs, ids, texts, X, labels=labels)
    for backend in (LocalBackend(), _ShardedInProcess()):
        votes, errors = apply_lfs_sharded(backend, None, labels, seed_X, seed_sets, desc_X, ids, texts, X)
        assert len(errors) == 0
        pd.testing.assert_frame_equal(votes.reset_index(drop=True), one.reset_index(drop=True))


@pytest.mark.slow
def test_ray_cluster_matches_local(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("LABELFLOW_COMPUTE", raising=False)
    monkeypatch.delenv("LABELFLOW_RAY_ADDRESS", raising=False)
    data = write_synthetic_dataset(tmp_path / "syn", pool=2000, classes=8, seeds_per_class=5, gold_per_class=4)
    with FakeLLM() as srv:
        local_tables, local_metrics = _run(tmp_path / "local", data, srv.api_base, {"backend": "local"})
        local_calls = srv.count
        srv.reset()
        with LocalRayCluster(nodes=2, dashboard=True) as cluster:
            cluster.wait_nodes(2)
            node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            ray_tables, ray_metrics = _run(
                tmp_path / "ray", data, srv.api_base, {"backend": "ray", "ray": {"address": cluster.address, "shard_size": 512}}
            )
            ray_calls = srv.count
            ray.init(address=cluster.address, namespace="labelflow", log_to_driver=False)
            from ray.util.state import list_tasks

            tasks = list_tasks(address=cluster.address, limit=10000, raise_on_missing_output=False)
            ran_on = {t.node_id for t in tasks if t.node_id}
            names = {t.name.split(".")[0] for t in tasks}
            ray.shutdown()
    assert local_calls > 0
    assert ray_calls == local_calls, f"LLM requests: ray {ray_calls}, local {local_calls}"
    assert node_ids <= ran_on, f"tasks ran on {len(ran_on & node_ids)} of {len(node_ids)} nodes"
    assert (
        any("_lf_shard" in n for n in names)
        and any("_EncoderImpl" in n for n in names)
        and any("_LLMWorkerImpl" in n for n in names)
    ), names
    for t in TABLES:
        pd.testing.assert_frame_equal(ray_tables[t], local_tables[t], obj=t)
    assert local_metrics and ray_metrics == local_metrics
