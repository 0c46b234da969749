"""Model assets: training_set, svm_model, pool_predictions, evaluation, and the data checks."""

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import MLflowResource
from labelflow.defs.util import OWNERS, md_figure, md_table, rounded
from labelflow.defs.vectors import all_vectors, vector_ins
from labelflow.embedding import EmbeddingIndex
from labelflow.merge import merge_by_priority
from labelflow.metrics import classification_metrics, confusion_figure, drift_metrics, multilabel_report, per_class_table
from labelflow.tracking import config_hash, git_commit, scalar_metrics
from labelflow.training import fit_classifier, predict_labels, predict_with_confidence

# The labelled dataset's columns (what `labelflow export` writes).
POOL_COLUMNS = ["id", "text", "label", "confidence", "confidence_raw", "label_source", "needs_review", "model_label"]

# Sources of training labels, highest priority first. Each is an upstream asset with (id, text, label,
# confidence) rows; only the rows it marks as usable (see `usable_rows`) enter the training set.
SOURCE_PRIORITY = [
    ("human_labels", "human"),
    ("seed_labels", "gold_seed"),
    ("rac_labels", "llm"),
    ("inbox_rac_labels", "llm"),
    ("red_labels", "llm-red"),
    ("llm_queue", "weak-confident"),
    ("inbox_queue", "weak-confident"),
]


def usable_rows(name: str, df: pd.DataFrame) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=["id", "text", "label", "confidence"])
    if name == "seed_labels":
        return df.assign(confidence=1.0)
    if name in ("llm_queue", "inbox_queue"):  # routed weak labels: only the kept bucket is used without the LLM
        df = df[df["bucket"] == "weak_confident"]
    if name == "red_labels" and "score" in df.columns:  # raw confidence of an LLM label: sigmoid(yes/no margin)
        df = df.assign(confidence=1.0 / (1.0 + np.exp(-df["score"].astype(float))))
    return df[df["label"].astype(str) != ""]


def merge_sources(upstream: dict) -> pd.DataFrame:
    """The usable rows of every source asset merged by :data:`SOURCE_PRIORITY` (one row per text)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    if "human_labels" in upstream:  # one label per text (latest review); one contradicting a seed is not applied
        from labelflow.review import human_training_rows

        upstream = {**upstream, "human_labels": human_training_rows(upstream)[0]}
    for name, source in SOURCE_PRIORITY:  # dicts keep the priority order; nightly rows join their source
        if name in upstream:
            frames.setdefault(source, []).append(usable_rows(name, upstream[name]))
    return merge_by_priority(
        [(source, pd.concat([d for d in dfs if len(d)] or dfs[:1], ignore_index=True)) for source, dfs in frames.items()]
    )


def model_assets(ds: DatasetConfig, sources: list[str]) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    ins = {name: dg.AssetIn(key=[p, name]) for name in sources}

    trust_ins = {
        name: dg.AssetIn(key=[p, name]) for name in ("pilot_validation", "label_issues", "label_space", "lf_definitions")
    }
    # the vectors of every text the model may see: the dataset's, then the nightly inbox's
    vec_ins = vector_ins(p, "inbox_queue" in sources)

    @dg.asset(
        key=[p, "training_set"],
        group_name=p,
        kinds={"duckdb", "pandas"},
        owners=owners,
        ins={**ins, **trust_ins},
        description="Merged training labels by source priority (human review > gold seed > LLM-verified (RAC, R.E.D.) > "
        "weak-confident), one row per text: id, text, label, source (= label_source), confidence "
        "(calibrated P(label right): LLM labels by Platt/precision on the pilot answers, weak labels on "
        "seed cross-validation), confidence_raw, needs_review (below min_confidence). With "
        "drop_label_issues, weak/LLM labels that label_issues suspects are left out.",
    )
    def training_set(
        context: dg.AssetExecutionContext,
        pilot_validation: pd.DataFrame,
        label_issues: pd.DataFrame,
        label_space,
        lf_definitions: pd.DataFrame,
        **upstream: pd.DataFrame,
    ) -> dg.Output:
        from labelflow.calibration import calibrate_labels
        from labelflow.defs.trust import source_calibrators

        merged = merge_sources(upstream)
        dropped = 0
        if ds.drop_label_issues and len(label_issues):
            suspect = set(label_issues.loc[label_issues["scope"] == "training_set", "id"])
            drop = merged["id"].isin(suspect) & ~merged["source"].isin(["gold_seed", "human"])  # never gold
            dropped = int(drop.sum())
            merged = merged[~drop].reset_index(drop=True)
        llm_cal, weak_cal, cal_meta = source_calibrators(
            ds, label_space, lf_definitions, upstream["seed_labels"], pilot_validation, tables=upstream
        )
        merged = calibrate_labels(merged, llm_cal, weak_cal, ds.min_confidence)
        by_source = merged.groupby("source").size().to_dict()
        context.log.info(f"training set: {len(merged)} rows by source {by_source}; {dropped} suspect labels dropped")
        from labelflow.review import human_training_rows

        conflicts = human_training_rows(upstream)[1]  # listed, not applied
        if len(conflicts):
            context.log.warning(
                f"{len(conflicts)} human label(s) contradict a gold seed and were not applied: see human_seed_conflicts"
            )
        mean_conf = merged.groupby("source")[["confidence", "confidence_raw"]].mean().round(3).reset_index()
        return dg.Output(
            merged,
            metadata=rounded(
                {
                    "dagster/row_count": len(merged),
                    **{f"rows_{k}": int(v) for k, v in by_source.items()},
                    "dropped_label_issues": dropped,
                    "needs_review": int(merged["needs_review"].sum()),
                    "confidence_by_source": md_table(mean_conf),
                    **cal_meta,
                    "human_seed_conflicts": md_table(conflicts, 50),
                }
            ),
        )

    @dg.asset(
        key=[p, "svm_model"],
        group_name=p,
        kinds={"scikitlearn", "mlflow"},
        owners=owners,
        ins=vec_ins,
        io_manager_key="model_io_manager",
        description=(
            "One-vs-rest calibrated LinearSVCs"
            if ds.multilabel
            else "LinearSVC, balanced class weights, calibrated probabilities"
        )
        + " on the text embeddings; logged to MLflow as a model.",
    )
    def svm_model(
        context: dg.AssetExecutionContext, mlflow: MLflowResource, training_set: pd.DataFrame, **vectors: EmbeddingIndex
    ) -> dg.Output:
        X = all_vectors(vectors).lookup(training_set["id"])
        weights = training_set["confidence"].astype(float).clip(0.05, 1.0).to_numpy() if not ds.multilabel else None
        # the top-class confidence is calibrated on the out-of-fold predictions of gold seeds and human labels
        model = fit_classifier(
            training_set["label"],
            X,
            ds.multilabel,
            sample_weight=weights,
            confidence_folds=3,
            confidence_rows=training_set["source"].isin(["gold_seed", "human"]).to_numpy(),
        )
        params = {
            "rows": len(training_set),
            "classes": len(model.classes_),
            "multilabel": ds.multilabel,
            "git_commit": git_commit(),
            "config_hash": config_hash(ds),
        }
        params.update({f"rows_{k}": v for k, v in training_set.groupby("source").size().items()})
        with mlflow.tracker().asset_run(p, "svm_model", dagster_run_id=context.run.run_id, params=params) as run:
            import mlflow.sklearn

            # cloudpickle: the model is a labelflow estimator (skops would refuse its types); pip
            # requirements are given so MLflow does not try to infer them from a package index.
            mlflow.sklearn.log_model(
                model, name="model", serialization_format="cloudpickle", pip_requirements=["labelflow", "scikit-learn==1.9.1"]
            )
        context.log.info(f"trained on {len(training_set)} rows, {len(model.classes_)} classes; MLflow run {run.info.run_id}")
        # the model IO manager writes the model file and adds its path and sha256 to this metadata
        return dg.Output(
            model,
            metadata={
                "mlflow_run_id": run.info.run_id,
                "rows": len(training_set),
                "classes": len(model.classes_),
                "calibration": getattr(model, "calibration_", "per-label sigmoid"),
            },
        )

    @dg.asset(
        key=[p, "pool_predictions"],
        group_name=p,
        kinds={"duckdb", "pandas"},
        owners=owners,
        description="The labelled dataset, one row per pool text: the training label where one exists "
        "(label_source llm / llm-red / weak-confident), else the model's (label_source model); "
        "confidence = calibrated P(label right), confidence_raw, needs_review (below min_confidence), "
        "model_label (export with `labelflow export`).",
    )
    def pool_predictions(
        context: dg.AssetExecutionContext,
        svm_model,
        text_pool: pd.DataFrame,
        training_set: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
    ) -> dg.Output:
        model = svm_model
        if len(text_pool) == 0:
            return dg.Output(pd.DataFrame(columns=POOL_COLUMNS), metadata={"dagster/row_count": 0})
        X = text_embeddings.lookup(text_pool["id"])
        labels, conf, raw = predict_with_confidence(model, X, ds.multilabel)
        out = text_pool[["id", "text"]].assign(
            label=labels, confidence=conf, confidence_raw=raw, label_source="model", model_label=labels
        )
        # a text with a training label (LLM-verified, weak-confident) keeps that label and its calibrated confidence
        tr = training_set.set_index("id")
        has = out["id"].isin(tr.index)
        for col in ("label", "confidence", "confidence_raw"):
            out.loc[has, col] = out.loc[has, "id"].map(tr[col]).to_numpy()
        out.loc[has, "label_source"] = out.loc[has, "id"].map(tr["source"]).to_numpy()
        out["needs_review"] = (out["confidence"].astype(float) < ds.min_confidence) if ds.min_confidence is not None else False
        out = out[POOL_COLUMNS]
        low = float((out["confidence"] < 0.5).mean())
        dist = (
            out.assign(label=out["label"].str.split("|")).explode("label").groupby("label").size().rename("texts").reset_index()
        )
        return dg.Output(
            out,
            metadata=rounded(
                {
                    "dagster/row_count": len(out),
                    "low_confidence_share": round(low, 4),
                    "needs_review": int(out["needs_review"].sum()),
                    "by_source": dg.MetadataValue.json(out["label_source"].value_counts().to_dict()),
                    "label_distribution": md_table(dist.sort_values("texts", ascending=False), 50),
                }
            ),
        )

    eval_ins = {"inbox_queue": dg.AssetIn(key=[p, "inbox_queue"])} if "inbox_queue" in sources else {}
    review_ins = [n for n in ("human_labels", "rac_labels", "red_labels", "llm_queue") if n in sources]  # sources vs humans
    eval_ins.update({n: dg.AssetIn(key=[p, n]) for n in review_ins})

    @dg.asset(
        key=[p, "evaluation"],
        group_name=p,
        kinds={"mlflow"},
        owners=owners,
        ins={**eval_ins, **vec_ins},
        check_specs=[
            dg.AssetCheckSpec(
                "macro_f1_drop",
                asset=dg.AssetKey([p, "evaluation"]),
                description=f"Warns when macro-F1 drops by more than {ds.f1_drop_warning} against the previous evaluation run.",
            ),
            dg.AssetCheckSpec(
                "per_class_f1_floor",
                asset=dg.AssetKey([p, "evaluation"]),
                description=f"Warns listing the classes whose gold F1 is under per_class_f1_min ({ds.per_class_f1_min}).",
            ),
        ],
        description="The model scored on gold_eval (accuracy, micro/macro-F1, per-class F1, confusion matrix), "
        "and on the hidden pool labels in benchmark mode; one MLflow run per materialisation.",
    )
    def evaluation(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        svm_model,
        gold_eval: pd.DataFrame,
        pool_predictions: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        training_set: pd.DataFrame,
        **nightly,
    ):
        model = svm_model
        reviewed = {n: nightly.pop(n) for n in review_ins}
        vectors = all_vectors(nightly)
        metrics: dict = {}
        params: dict = {}
        per_class = pd.DataFrame()
        fig = None
        if len(gold_eval):
            X = vectors.lookup(gold_eval["id"])
            pred, _ = predict_labels(model, X, ds.multilabel)
            if ds.multilabel:
                ml_metrics, per_class = multilabel_report(gold_eval["label"], pred, list(model.classes_))
                metrics.update(ml_metrics)
            else:
                labels = list(model.classes_)
                metrics.update(classification_metrics(gold_eval["label"], pred, labels))
                per_class = per_class_table(gold_eval["label"], pred, labels)
                fig = confusion_figure(gold_eval["label"], pred, labels)
        if len(hidden_pool_labels) and len(pool_predictions):
            merged = pool_predictions.merge(hidden_pool_labels[["id", "label"]], on="id", suffixes=("", "_gold"))
            metrics["pool_accuracy"] = float((merged["label"] == merged["label_gold"]).mean())
        day = context.run.tags.get("dagster/partition")
        inbox = nightly.get("inbox_queue")
        if day and inbox is not None and len(inbox):
            # drift signal of the night: how many new texts, how many went to the LLM, and how many the
            # retrained model labels with low confidence
            new = inbox[pd.to_datetime(inbox["day"]).dt.strftime("%Y-%m-%d") == day]
            params.update({"partition": day, "new_rows": len(new)})
            _, conf = predict_labels(model, vectors.lookup(new["id"]), ds.multilabel) if len(new) else (None, [])
            metrics.update(drift_metrics(new, conf))
        from labelflow.review import accuracy_vs_humans

        human_metrics, human_acc, human_acc_class = accuracy_vs_humans(reviewed)  # each source vs the reviewers
        metrics.update(human_metrics)
        metrics["training_rows"] = len(training_set)
        metrics["pool_low_confidence_share"] = (
            float((pool_predictions["confidence"] < 0.5).mean()) if len(pool_predictions) else 0.0
        )
        tracker = mlflow.tracker()
        previous = tracker.previous_runs(p, "evaluation", n=1)
        if len(previous) and "metrics.macro_f1" in previous and "macro_f1" in metrics:
            metrics["macro_f1_delta"] = metrics["macro_f1"] - float(previous["metrics.macro_f1"].iloc[0])
        tables = {"per_class.csv": per_class} if len(per_class) else {}
        if len(human_acc):
            tables.update(
                {"source_accuracy_vs_humans.csv": human_acc, "source_accuracy_vs_humans_per_class.csv": human_acc_class}
            )
        run_id = tracker.log_asset(
            p,
            "evaluation",
            dagster_run_id=context.run.run_id,
            metrics=metrics,
            tables=tables,
            params={
                "gold_rows": len(gold_eval),
                "multilabel": ds.multilabel,
                "git_commit": git_commit(),
                "config_hash": config_hash(ds),
                "pool_rows": len(pool_predictions),
                "training_rows": len(training_set),
                **params,
            },
            figures={"confusion_matrix.png": fig},
        )
        context.log.info(f"{p} evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in scalar_metrics(metrics).items()))
        meta = {k: float(v) for k, v in scalar_metrics(metrics).items()}
        meta["mlflow_run_id"] = run_id
        if len(per_class):
            meta["per_class_f1"] = md_table(per_class, 100)
        if fig is not None:
            meta["confusion_matrix"] = md_figure(fig, "confusion matrix")
        if len(human_acc):
            meta["source_accuracy_vs_humans"] = md_table(human_acc)
            meta["source_accuracy_vs_humans_per_class"] = md_table(human_acc_class, 100)
        yield dg.MaterializeResult(metadata=rounded(meta))
        delta = metrics.get("macro_f1_delta")
        yield dg.AssetCheckResult(
            check_name="macro_f1_drop",
            passed=delta is None or delta >= -ds.f1_drop_warning,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=rounded(
                {
                    "macro_f1_delta": float(delta) if delta is not None else 0.0,
                    "allowed_drop": ds.f1_drop_warning,
                    "previous_run": "none" if delta is None else "compared",
                }
            ),
        )
        under = per_class[(per_class["f1"] < ds.per_class_f1_min) & (per_class["support"] > 0)] if len(per_class) else per_class
        yield dg.AssetCheckResult(
            check_name="per_class_f1_floor",
            passed=len(under) == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=rounded(
                {
                    "per_class_f1_min": ds.per_class_f1_min,
                    "classes_under": len(under),
                    "classes_evaluated": len(per_class),
                    "under": md_table(under.round(3), 100) if len(under) else "none",
                }
            ),
        )

    @dg.asset_check(
        asset=dg.AssetKey([p, "gold_eval"]),
        additional_ins={"seed_labels": dg.AssetIn(key=[p, "seed_labels"]), "text_pool": dg.AssetIn(key=[p, "text_pool"])},
        description="No text is shared between the seeds or the pool and the gold test set.",
    )
    def no_gold_leak(gold_eval: pd.DataFrame, seed_labels: pd.DataFrame, text_pool: pd.DataFrame) -> dg.AssetCheckResult:
        gold = set(gold_eval["text"].str.strip().str.lower())
        seed_hits = sorted(set(seed_labels["text"].str.strip().str.lower()) & gold)
        pool_hits = sorted(set(text_pool["text"].str.strip().str.lower()) & gold)
        return dg.AssetCheckResult(
            passed=not seed_hits and not pool_hits,
            metadata={
                "seed_texts_in_gold": len(seed_hits),
                "pool_texts_in_gold": len(pool_hits),
                "examples": dg.MetadataValue.json((seed_hits + pool_hits)[:5]),
            },
        )

    @dg.asset_check(
        asset=dg.AssetKey([p, "seed_labels"]),
        additional_ins={"gold_eval": dg.AssetIn(key=[p, "gold_eval"])},
        description="Every label (of the seeds and the gold set) has at least one seed example.",
    )
    def every_label_has_seed(seed_labels: pd.DataFrame, gold_eval: pd.DataFrame) -> dg.AssetCheckResult:
        seeded = set(seed_labels["label"].str.split("|").explode())
        gold = set(gold_eval["label"].str.split("|").explode()) if len(gold_eval) else set()
        missing = sorted(gold - seeded)
        return dg.AssetCheckResult(
            passed=not missing, metadata={"labels": len(seeded), "labels_without_seed": dg.MetadataValue.json(missing)}
        )

    return [training_set, svm_model, pool_predictions, evaluation, no_gold_leak, every_label_has_seed]
