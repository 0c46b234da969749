"""Labelling assets: label_descriptions, label_embeddings, pilot_validation, weak_label_matrix,
weak_labels, llm_queue, rac_labels, red_labels. Each loads its inputs, calls the library, writes the
result and attaches metadata; every asset that spends LLM calls records calls, tokens, cost and time."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import label_lists, read_label_descriptions, text_id
from labelflow.defs.resources import EmbedderResource, ExpertResource, MLflowResource, StoresResource
from labelflow.defs.util import OWNERS, md_figure, md_table, usage_metadata, text_tables
from labelflow.tracking import log_figure, log_table, scalar_metrics


def _seed_vectors(stores: StoresResource, p: str, seeds: pd.DataFrame) -> np.ndarray:
    return stores.vectors().vectors_for(text_tables(p), seeds["id"])


def _label_vectors(stores: StoresResource, p: str) -> tuple[list[str], np.ndarray]:
    df = stores.vectors().read(f"{p}__label_embeddings").sort_values("label")
    return df["label"].tolist(), np.vstack(df["vector"].to_numpy()).astype(np.float32)


def _hidden_truth(hidden_pool_labels: pd.DataFrame) -> pd.Series | None:
    """Benchmark mode only: the pool's hidden gold labels (id -> label) for scoring, else None."""
    return hidden_pool_labels.set_index("id")["label"] if len(hidden_pool_labels) else None


def _description_map(label_descriptions: pd.DataFrame) -> dict[str, str]:
    return dict(zip(label_descriptions["label"], label_descriptions["description"]))


def _pilot_threshold(pilot: pd.DataFrame) -> float | None:
    """The yes/no threshold calibrated by the pilot (None when the pilot had no answers)."""
    if len(pilot) and "threshold" in pilot and pd.notna(pilot["threshold"].iloc[0]):
        return float(pilot["threshold"].iloc[0])
    return None


def labelling_assets(ds: DatasetConfig) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731
    items: list = []

    @dg.asset(key=key("label_descriptions"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[key("text_embeddings")],
              description="One description per label: the user's from labels.csv (source=user) or written by the "
                          "LLM from the label name, seed examples and its nearest labels (source=llm).")
    def label_descriptions(context: dg.AssetExecutionContext, stores: StoresResource, expert: ExpertResource,
                           seed_labels: pd.DataFrame) -> dg.Output:
        from labelflow.descriptions import describe_labels
        from labelflow.pilot import label_centroids

        labels = sorted({lab for labs in label_lists(seed_labels["label"], ds.multilabel) for lab in labs})
        user = read_label_descriptions(ds.path, labels)
        centroids = label_centroids(seed_labels, _seed_vectors(stores, p, seed_labels), ds.multilabel)
        missing = len(set(labels) - set(user["label"]))
        context.log.info(f"{len(user)} user descriptions; writing {missing} with the expert")
        exp = expert.get() if missing else None
        out = describe_labels(labels, seed_labels, user, exp, label_vectors=centroids, multilabel=ds.multilabel) \
            if missing else user.assign(source="user", model="")
        meta = {"dagster/row_count": len(out), "by_source": dg.MetadataValue.json(out["source"].value_counts().to_dict()),
                "descriptions": md_table(out[["label", "source", "description"]], 100)}
        if exp is not None:
            meta.update(usage_metadata(exp.usage))
        return dg.Output(out, metadata=meta)

    @dg.asset(key=key("label_embeddings"), group_name=p, kinds={"lancedb"}, owners=owners,
              description="Embeddings of 'label: description' per label in LanceDB (label, text, vector).")
    def label_embeddings(context: dg.AssetExecutionContext, stores: StoresResource, embedder: EmbedderResource,
                         label_descriptions: pd.DataFrame) -> dg.MaterializeResult:
        texts = [f"{lab.replace('_', ' ')}: {d}" for lab, d in zip(label_descriptions["label"], label_descriptions["description"])]
        X, reused = stores.vectors().embed_cached(texts, embedder.get())
        stores.vectors().write(f"{p}__label_embeddings", pd.DataFrame({"label": label_descriptions["label"], "text": texts, "vector": list(X)}))
        return dg.MaterializeResult(metadata={"labels": len(texts), "reused": reused})

    @dg.asset(key=key("pilot_validation"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[key("text_embeddings")],
              check_specs=[dg.AssetCheckSpec("pilot_accuracy", asset=key("pilot_validation"),
                                             description=f"The expert's pilot accuracy is at least {ds.pilot_min_accuracy}.")],
              description="The pipeline's first gate: the expert answers yes/no on seed examples paired with their "
                          "true label and a confusable wrong one; accuracy, precision/recall of yes, and the calibrated "
                          "yes/no threshold used by later stages.")
    def pilot_validation(context: dg.AssetExecutionContext, stores: StoresResource, expert: ExpertResource,
                         mlflow: MLflowResource, seed_labels: pd.DataFrame, label_descriptions: pd.DataFrame):
        from labelflow.pilot import label_centroids, pilot_pairs, run_pilot

        centroids = label_centroids(seed_labels, _seed_vectors(stores, p, seed_labels), ds.multilabel)
        desc = _description_map(label_descriptions)
        questions, truth = pilot_pairs(seed_labels, centroids, ds.pilot_size, seed=ds.seed, multilabel=ds.multilabel, descriptions=desc)
        exp = expert.get()
        context.log.info(f"pilot: {len(questions)} yes/no questions to {exp.name}")
        r = run_pilot(exp, questions, truth, min_accuracy=ds.pilot_min_accuracy, seed=ds.seed)
        summary = {k: getattr(r, k) for k in ("expert", "n", "accuracy", "precision_yes", "recall_yes", "threshold_default",
                                              "threshold", "accuracy_calibrated", "accuracy_calibrated_cv", "gate_accuracy",
                                              "unparseable", "calls", "seconds", "seconds_per_validation", "passed")}
        meta = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()}
        meta["confusions"] = md_table(r.confusions, 30)
        meta.update(usage_metadata(exp.usage))
        with mlflow.tracker().run(p, "pilot_validation", tags={"asset": "pilot_validation", "dagster_run_id": context.run.run_id,
                                                               "expert": exp.name}) as run:
            import mlflow as mlf

            mlf.log_metrics(scalar_metrics({**summary, **usage_metadata(exp.usage)}))
            log_table(r.confusions, "pilot_confusions.csv")
        meta["mlflow_run_id"] = run.info.run_id
        yield dg.Output(pd.DataFrame([summary]), metadata=meta)
        yield dg.AssetCheckResult(check_name="pilot_accuracy", passed=bool(r.passed),
                                  severity=dg.AssetCheckSeverity.WARN,
                                  metadata={"gate_accuracy": float(r.gate_accuracy), "min_accuracy": ds.pilot_min_accuracy,
                                            "confusions": md_table(r.confusions, 30)})

    @dg.asset(key=key("weak_label_matrix"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[key("text_embeddings"), key("label_embeddings")],
              description="Labelling-function votes on the pool in long format (id, lf, label): the dataset's lfs.yaml "
                          "plus built-in embedding LFs (seed centroid, k nearest seeds, label description). The LF "
                          "analysis (coverage, overlaps, conflicts, accuracy on the seeds) is in the metadata and MLflow.")
    def weak_label_matrix(context: dg.AssetExecutionContext, stores: StoresResource, mlflow: MLflowResource,
                          seed_labels: pd.DataFrame, text_pool: pd.DataFrame, hidden_pool_labels: pd.DataFrame) -> dg.Output:
        from labelflow import weak

        labels, label_X = _label_vectors(stores, p)
        seed_X = _seed_vectors(stores, p, seed_labels)
        lfs = weak.standard_lfs(ds.path / "lfs.yaml", labels, seed_X, label_lists(seed_labels["label"], ds.multilabel), label_X)
        pool_X = stores.vectors().vectors_for(text_tables(p), text_pool["id"])
        votes, errors = weak.apply_lfs(lfs, text_pool["id"], text_pool["text"], pool_X, labels=labels)
        for _, e in errors.iterrows():
            context.log.warning(f"labelling function {e['lf']} failed on text {e['id']}: {e['error']} (excluded from this run)")
        names = [lf.name for lf in lfs]
        truth = _hidden_truth(hidden_pool_labels)
        seed_votes, _ = weak.apply_lfs(lfs, seed_labels["id"], seed_labels["text"], seed_X, labels=labels)
        analysis = weak.lf_analysis(seed_votes, names, len(seed_labels), seed_labels.set_index("id")["label"], multilabel=ds.multilabel)
        analysis = analysis.rename(columns={c: f"seeds_{c}" for c in analysis.columns if c != "lf"})
        pool_analysis = weak.lf_analysis(votes, names, len(text_pool), truth, multilabel=ds.multilabel)
        table = pool_analysis.merge(analysis[["lf"] + [c for c in analysis.columns if "accuracy" in c]], on="lf", how="left")
        with mlflow.tracker().run(p, "weak_label_matrix", tags={"asset": "weak_label_matrix", "dagster_run_id": context.run.run_id}) as run:
            import mlflow as mlf

            mlf.log_metrics({"lfs": len(names), "votes": len(votes), "lf_errors": len(errors),
                             "pool_coverage": float(votes["id"].nunique() / max(len(text_pool), 1))})
            log_table(table, "lf_analysis.csv")
        return dg.Output(votes, metadata={"dagster/row_count": len(votes), "lfs": len(names), "lf_errors": len(errors),
                                          "lf_analysis": md_table(table, 100), "mlflow_run_id": run.info.run_id,
                                          "note": "seeds_* accuracy of the embedding LFs is optimistic: they are built from the seeds"})

    @dg.asset(key=key("weak_labels"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[key("label_embeddings")],
              description=f"One weak label per pool text from the label model ({ds.label_model}; majority vote "
                          "reported beside it): label, confidence, number of votes, conflict flag.")
    def weak_labels(context: dg.AssetExecutionContext, stores: StoresResource, text_pool: pd.DataFrame,
                    weak_label_matrix: pd.DataFrame, hidden_pool_labels: pd.DataFrame) -> dg.Output:
        from labelflow.routing import aggregate_votes

        labels, _ = _label_vectors(stores, p)
        ids = text_pool["id"].astype(str).tolist()
        names = ["multilabel_vote"] if ds.multilabel else sorted({"majority_vote", ds.label_model}, key=lambda n: n != "majority_vote")
        results = {}
        for name in names:
            t0 = time.perf_counter()
            results[name] = (aggregate_votes(weak_label_matrix, ids, labels, name, ds.multilabel), time.perf_counter() - t0)
        chosen = results[names[-1]][0]
        compare = []
        truth = _hidden_truth(hidden_pool_labels)
        for name, (wl, secs) in results.items():
            covered = wl["label"] != ""
            row = {"label_model": name, "coverage": float(covered.mean()) if len(wl) else 0.0, "fit_s": secs}
            if truth is not None and covered.any():
                row["accuracy_on_covered"] = float((wl.loc[covered, "label"] == wl.loc[covered, "id"].map(truth)).mean())
            compare.append(row)
        return dg.Output(chosen, metadata={"dagster/row_count": len(chosen), "label_model": names[-1],
                                           "label_models": md_table(pd.DataFrame(compare))})

    @dg.asset(key=key("llm_queue"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              description="Routing of weak labels: kept (weak_confident), queued for the LLM (ambiguous, disputed, "
                          "uncovered; ordered by priority and capped by the budget) or left to the model (rest).")
    def llm_queue(context: dg.AssetExecutionContext, text_pool: pd.DataFrame, weak_labels: pd.DataFrame,
                  hidden_pool_labels: pd.DataFrame) -> dg.Output:
        from labelflow.routing import bucket_report, route

        routed = route(weak_labels, ds.routing, budget=ds.llm_budget_calls)
        routed = routed.merge(text_pool[["id", "text"]], on="id", how="left")
        truth = _hidden_truth(hidden_pool_labels)
        report = bucket_report(routed, routed["id"].map(truth) if truth is not None else None)
        n_queued = int(routed["queued"].sum())
        context.log.info(f"routing: {routed['bucket'].value_counts().to_dict()}; {n_queued} queued for the LLM")
        return dg.Output(routed, metadata={"dagster/row_count": len(routed), "queued": n_queued,
                                           "kept_weak_confident": int((routed["bucket"] == "weak_confident").sum()),
                                           "buckets": md_table(report)})

    items += [label_descriptions, label_embeddings, pilot_validation, weak_label_matrix, weak_labels, llm_queue]
    items += [_rac_asset(ds, owners)]
    if not ds.multilabel:
        items += [_red_asset(ds, owners)]
    return items


def _rac_asset(ds: DatasetConfig, owners):
    p = ds.name
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731

    @dg.asset(key=key("rac_labels"), group_name=p, kinds={"duckdb", "pandas", "mlflow"}, owners=owners,
              deps=[key("label_embeddings"), key("text_embeddings")],
              description=f"RAC over the LLM queue: labels ranked by description/seed similarity, one yes/no question "
                          f"per candidate in rank order, first accept wins; abstain when none of the top {ds.rac_k} is "
                          "accepted. Coverage/precision over k in the metadata and MLflow.")
    def rac_labels(context: dg.AssetExecutionContext, stores: StoresResource, expert: ExpertResource, mlflow: MLflowResource,
                   seed_labels: pd.DataFrame, llm_queue: pd.DataFrame, label_descriptions: pd.DataFrame,
                   pilot_validation: pd.DataFrame, hidden_pool_labels: pd.DataFrame) -> dg.Output:
        from labelflow.metrics import classification_metrics
        from labelflow.rac import label_queue, truncate

        queue = llm_queue[llm_queue["queued"].astype(bool)].reset_index(drop=True)
        labels, label_X = _label_vectors(stores, p)
        seed_X = _seed_vectors(stores, p, seed_labels)
        exp = expert.get(threshold=_pilot_threshold(pilot_validation))
        X = stores.vectors().vectors_for(text_tables(p), queue["id"]) if len(queue) else np.zeros((0, seed_X.shape[1]), np.float32)
        context.log.info(f"RAC: {len(queue)} queued texts, k={ds.rac_k}, expert {exp.name}")
        res, rac = label_queue(exp, queue, X, seed_labels, seed_X, labels, label_X,
                               _description_map(label_descriptions), ds.rac_k, ds.multilabel)
        truth = _hidden_truth(hidden_pool_labels)
        rows = []
        for k in range(1, (ds.rac_k or len(labels)) + 1):
            t = truncate(res, rac.questions_, k, multilabel=ds.multilabel) if len(res) else res
            labelled = int((t["label"] != "").sum())
            row = {"k": k, "coverage": labelled / max(len(t), 1), "calls_per_labelled": t["calls"].sum() / max(labelled, 1),
                   "prompt_tokens_per_labelled": t["prompt_tokens"].sum() / max(labelled, 1)}
            if truth is not None and len(t) and not ds.multilabel:
                row["precision"] = classification_metrics(t["id"].map(truth), t["label"], labels)["precision"]
            rows.append(row)
        over_k = pd.DataFrame(rows)
        fig = _coverage_figure(over_k)
        with mlflow.tracker().run(p, "rac_labels", tags={"asset": "rac_labels", "dagster_run_id": context.run.run_id, "expert": exp.name}) as run:
            import mlflow as mlf

            mlf.log_params({"k": ds.rac_k, "queued": len(queue), "expert": exp.name})
            last = over_k.iloc[-1].to_dict() if len(over_k) else {}
            mlf.log_metrics(scalar_metrics({**{f"rac_{k}": v for k, v in last.items() if k != "k"},
                                            **{f"llm_{k}": v for k, v in usage_metadata(exp.usage).items()}}))
            log_table(over_k, "rac_over_k.csv")
            log_figure(fig, "rac_coverage_precision.png")
        meta = {"dagster/row_count": len(res), "labelled": int((res["label"] != "").sum()),
                "coverage": float((res["label"] != "").mean()) if len(res) else 0.0, "expert": exp.name,
                "over_k": md_table(over_k), "coverage_precision_plot": md_figure(fig), "mlflow_run_id": run.info.run_id}
        meta.update(usage_metadata(exp.usage))
        return dg.Output(res, metadata=meta)

    return rac_labels


def _red_asset(ds: DatasetConfig, owners):
    p = ds.name
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731

    @dg.asset(key=key("red_labels"), group_name=p, kinds={"duckdb", "pandas", "mlflow"}, owners=owners,
              deps=[key("label_embeddings"), key("text_embeddings")],
              description="R.E.D. over the pool: label subsets of mutually dissimilar labels, a classifier per subset with "
                          "a noise class, the most uncertain predictions validated by the LLM with dynamic evidence, "
                          "retrained each round until saturation. Per-round figures in MLflow.")
    def red_labels(context: dg.AssetExecutionContext, stores: StoresResource, expert: ExpertResource, mlflow: MLflowResource,
                   seed_labels: pd.DataFrame, text_pool: pd.DataFrame, label_descriptions: pd.DataFrame,
                   pilot_validation: pd.DataFrame, rac_labels: pd.DataFrame, hidden_pool_labels: pd.DataFrame) -> dg.Output:
        from labelflow.red import REDLabeler, rounds_figure

        labels, label_X = _label_vectors(stores, p)
        seed_X = _seed_vectors(stores, p, seed_labels)
        # texts RAC already labelled are not asked again
        done = set(rac_labels.loc[rac_labels["label"] != "", "id"])
        pool = text_pool[~text_pool["id"].isin(done)].reset_index(drop=True)
        exp = expert.get(threshold=_pilot_threshold(pilot_validation))
        red = REDLabeler(exp, top_k_uncertain=ds.red_top_k, max_rounds=ds.red_max_rounds,
                         budget_calls=ds.red_budget_calls or ds.llm_budget_calls, seed=ds.seed)
        red.fit(seed_X, seed_labels["label"].tolist(), label_vectors=None, seed_texts=seed_labels["text"].tolist())
        pool_X = stores.vectors().vectors_for(text_tables(p), pool["id"]) if len(pool) else np.zeros((0, seed_X.shape[1]), np.float32)
        context.log.info(f"R.E.D.: {len(pool)} pool texts, {len(labels)} labels, expert {exp.name}")
        result = red.run(pool["id"].tolist(), pool["text"].tolist(), pool_X,
                         _description_map(label_descriptions))
        out = result.labels.merge(pool[["id", "text"]], on="id", how="left")
        truth = _hidden_truth(hidden_pool_labels)
        meta = {"dagster/row_count": len(out), "stop_reason": result.stop_reason, "rounds": len(result.rounds),
                "expert": exp.name, "rounds_table": md_table(result.rounds)}
        if truth is not None and len(out):
            meta["accepted_accuracy"] = float((out["label"] == out["id"].map(truth)).mean())
        fig = rounds_figure(result.rounds) if len(result.rounds) else None
        with mlflow.tracker().run(p, "red_labels", tags={"asset": "red_labels", "dagster_run_id": context.run.run_id, "expert": exp.name}) as run:
            import mlflow as mlf

            for _, r in result.rounds.iterrows():
                mlf.log_metrics(scalar_metrics({k: r[k] for k in ("uncertain", "asked", "accepted", "rejected", "calls")}), step=int(r["round"]))
            mlf.log_params({"stop_reason": result.stop_reason, "expert": exp.name})
            mlf.log_metrics(scalar_metrics(usage_metadata(result.usage)))
            if fig is not None:
                log_figure(fig, "red_rounds.png")
        meta["mlflow_run_id"] = run.info.run_id
        if fig is not None:
            meta["rounds_plot"] = md_figure(fig)
        meta.update(usage_metadata(result.usage))
        return dg.Output(out, metadata=meta)

    return red_labels


def _coverage_figure(over_k: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(over_k["k"], over_k["coverage"], marker="o", label="coverage")
    if "precision" in over_k:
        ax.plot(over_k["k"], over_k["precision"], marker="s", label="precision")
    ax.set_xlabel("truncation k")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("RAC coverage / precision over k")
    fig.tight_layout()
    return fig
