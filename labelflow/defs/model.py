"""Model assets: training_set, svm_model, svm_scores (the pool and the gold set scored once per run),
pool_predictions, evaluation, and the data checks. One builder per asset, each taking the
DatasetConfig; :func:`model_assets` composes them."""

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import EmbedderResource, MLflowResource, StoresResource
from labelflow.defs.util import dataset_asset, md_figure, md_table, rounded
from labelflow.defs.vectors import CONTEXT_SOURCES, all_vectors, model_features, previous_messages, vector_ins
from labelflow.merge import merge_by_priority
from labelflow.metrics import drift_metrics, gold_report
from labelflow.tracking import config_hash, git_commit, scalar_metrics
from labelflow.training import ScoreMatrix, fit_classifier, score_texts

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


def training_set_asset(ds: DatasetConfig, sources: list[str]) -> dg.AssetsDefinition:
    p = ds.name
    ins = {name: dg.AssetIn(key=[p, name]) for name in sources}
    trust_ins = {
        name: dg.AssetIn(key=[p, name]) for name in ("pilot_validation", "label_issues", "label_space", "lf_definitions")
    }

    @dataset_asset(
        ds,
        "training_set",
        kinds={"duckdb", "pandas"},
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
        from labelflow.calibration import calibrate_labels, source_calibrators
        from labelflow.review import human_training_rows

        merged, dropped = drop_suspect_labels(ds, merge_sources(upstream), label_issues)
        llm_cal, weak_cal, cal_meta = source_calibrators(
            ds, label_space, lf_definitions, upstream["seed_labels"], pilot_validation, tables=upstream
        )
        merged = calibrate_labels(merged, llm_cal, weak_cal, ds.min_confidence)
        by_source = merged.groupby("source").size().to_dict()
        context.log.info(f"training set: {len(merged)} rows by source {by_source}; {dropped} suspect labels dropped")
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

    return training_set


def drop_suspect_labels(ds: DatasetConfig, merged: pd.DataFrame, label_issues: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """With ``drop_label_issues``: the merged training labels less the weak/LLM ones that label_issues
    suspects (never a gold seed or a human label), and how many were left out."""
    if not ds.drop_label_issues or not len(label_issues):
        return merged, 0
    suspect = set(label_issues.loc[label_issues["scope"] == "training_set", "id"])
    drop = merged["id"].isin(suspect) & ~merged["source"].isin(["gold_seed", "human"])  # never gold
    return merged[~drop].reset_index(drop=True), int(drop.sum())


def svm_model_asset(ds: DatasetConfig, sources: list[str]) -> dg.AssetsDefinition:
    p = ds.name

    @dataset_asset(
        ds,
        "svm_model",
        kinds={"scikitlearn", "mlflow"},
        # every text the model may see: the dataset's, the inbox's (and, with context_features, their previous messages)
        ins={**vector_ins(p, "inbox_queue" in sources), **_context_ins(ds, sources)},
        io_manager_key="model_io_manager",
        description=(
            "One-vs-rest calibrated LinearSVCs"
            if ds.multilabel
            else "LinearSVC, balanced class weights, calibrated probabilities"
        )
        + (" on [text, previous message] embeddings" if ds.context_features else " on the text embeddings")
        + "; logged to MLflow as a model.",
    )
    def svm_model(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        stores: StoresResource,
        embedder: EmbedderResource,
        training_set: pd.DataFrame,
        **vectors,
    ) -> dg.Output:
        previous = previous_messages(vectors) if ds.context_features else None
        X = model_features(stores.lancedb_uri, embedder.get(), all_vectors(vectors), training_set["id"], previous)
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
        model.context_features_ = ds.context_features  # svm_scores builds the same features to score with it
        params = {
            "rows": len(training_set),
            "classes": len(model.classes_),
            "multilabel": ds.multilabel,
            "context_features": ds.context_features,
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
                "features": X.shape[1],
                "with_previous_message": int(sum(1 for i in training_set["id"] if (previous or {}).get(str(i)))),
            },
        )

    return svm_model


def _context_ins(ds: DatasetConfig, sources: list[str]) -> dict:
    """With ``context_features``: the tables holding the training texts' previous messages."""
    if not ds.context_features:
        return {}
    names = [n for n in CONTEXT_SOURCES if n != "gold_eval" and (n != "inbox_queue" or "inbox_queue" in sources)]
    return {n: dg.AssetIn(key=[ds.name, n]) for n in names}


def svm_scores_asset(ds: DatasetConfig, sources: list[str]) -> dg.AssetsDefinition:
    p = ds.name
    inbox = "inbox_queue" in sources
    ins = {**vector_ins(p, inbox), **({"inbox_queue": dg.AssetIn(key=[p, "inbox_queue"])} if inbox else {})}

    @dataset_asset(
        ds,
        "svm_scores",
        kinds={"scikitlearn"},
        ins=ins,
        io_manager_key="values_io_manager",
        description="The model's scores, computed once per run: for the pool, the gold set"
        + (" and the nightly inbox texts" if inbox else "")
        + ", a ScoreMatrix each (ids, classes, class probabilities, calibrated top-class confidence). "
        "pool_predictions, evaluation, calibration and the RAPT assets read them.",
    )
    def svm_scores(
        context: dg.AssetExecutionContext,
        stores: StoresResource,
        embedder: EmbedderResource,
        svm_model,
        text_pool: pd.DataFrame,
        gold_eval: pd.DataFrame,
        **inputs,
    ) -> dg.Output:
        vectors = all_vectors(inputs)
        parts = {"pool": text_pool["id"], "gold": gold_eval["id"]}
        if inbox:
            parts["inbox"] = inputs["inbox_queue"].get("id", pd.Series(dtype=str))  # no inbox day yet: no column
        # a model trained with context_features is scored on the same [text, previous message] features
        frames = {"text_pool": text_pool, "gold_eval": gold_eval, "inbox_queue": inputs.get("inbox_queue")}
        previous = previous_messages(frames) if getattr(svm_model, "context_features_", False) else None
        scores = {
            name: score_texts(
                svm_model,
                ids,
                model_features(stores.lancedb_uri, embedder.get(), vectors, ids, previous) if len(ids) else None,
                ds.multilabel,
            )
            for name, ids in parts.items()
        }
        context.log.info(f"scored {', '.join(f'{len(s)} {name}' for name, s in scores.items())} texts")
        meta = {f"{name}_texts": len(s) for name, s in scores.items()}
        meta.update({f"{name}_seconds": s.seconds for name, s in scores.items()})
        meta["classes"] = len(svm_model.classes_)
        return dg.Output(scores, metadata=rounded(meta))

    return svm_scores


def pool_predictions_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "pool_predictions",
        kinds={"duckdb", "pandas"},
        description="The labelled dataset, one row per pool text: the training label where one exists "
        "(label_source llm / llm-red / weak-confident), else the model's (label_source model); "
        "confidence = calibrated P(label right), confidence_raw, needs_review (below min_confidence), "
        "model_label (export with `labelflow export`).",
    )
    def pool_predictions(
        context: dg.AssetExecutionContext, svm_scores: dict, text_pool: pd.DataFrame, training_set: pd.DataFrame
    ) -> dg.Output:
        if len(text_pool) == 0:
            return dg.Output(pd.DataFrame(columns=POOL_COLUMNS), metadata={"dagster/row_count": 0})
        out = labelled_pool(ds, text_pool, svm_scores["pool"].take(text_pool["id"]), training_set)
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

    return pool_predictions


def labelled_pool(ds: DatasetConfig, text_pool: pd.DataFrame, scores: ScoreMatrix, training_set: pd.DataFrame) -> pd.DataFrame:
    """The labelled dataset (:data:`POOL_COLUMNS`): the model's label and confidence for every pool text
    (``scores``: its rows, in ``text_pool`` order), replaced by the training label and its calibrated
    confidence where the text has one."""
    labels, conf, raw = scores.labels_with_confidence()
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
    return out[POOL_COLUMNS]


def evaluation_asset(ds: DatasetConfig, sources: list[str]) -> dg.AssetsDefinition:
    p = ds.name
    eval_ins = {"inbox_queue": dg.AssetIn(key=[p, "inbox_queue"])} if "inbox_queue" in sources else {}
    review_ins = [n for n in ("human_labels", "rac_labels", "red_labels", "llm_queue") if n in sources]  # sources vs humans
    eval_ins.update({n: dg.AssetIn(key=[p, n]) for n in review_ins})

    @dataset_asset(
        ds,
        "evaluation",
        kinds={"mlflow"},
        ins=eval_ins,
        check_specs=evaluation_check_specs(ds),
        description="The model scored on gold_eval (accuracy, micro/macro-F1, per-class F1, confusion matrix), "
        "and on the hidden pool labels in benchmark mode; one MLflow run per materialisation.",
    )
    def evaluation(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        svm_scores: dict,
        gold_eval: pd.DataFrame,
        pool_predictions: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        training_set: pd.DataFrame,
        **nightly,
    ):
        from labelflow.review import accuracy_vs_humans

        reviewed = {n: nightly.pop(n) for n in review_ins}
        day = context.run.tags.get("dagster/partition")
        metrics, params, per_class, fig = model_figures(
            ds, svm_scores, gold_eval, pool_predictions, hidden_pool_labels, nightly.get("inbox_queue"), day
        )
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
        params.update({"pool_rows": len(pool_predictions), "training_rows": len(training_set)})
        run_id = tracker.log_asset(
            p,
            "evaluation",
            dagster_run_id=context.run.run_id,
            metrics=metrics,
            tables=tables,
            params=params,
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
        yield from evaluation_checks(ds, metrics, per_class)

    return evaluation


def model_figures(
    ds: DatasetConfig,
    svm_scores: dict,
    gold_eval: pd.DataFrame,
    pool_predictions: pd.DataFrame,
    hidden_pool_labels: pd.DataFrame,
    inbox: pd.DataFrame | None,
    day: str | None,
) -> tuple[dict, dict, pd.DataFrame, object]:
    """(metrics, MLflow params, per-class table, confusion figure or None) of the model: on gold, on the
    hidden pool labels (benchmark mode) and, on a nightly run (``day``), the drift of that night's texts."""
    metrics: dict = {}
    params: dict = {
        "gold_rows": len(gold_eval),
        "multilabel": ds.multilabel,
        "git_commit": git_commit(),
        "config_hash": config_hash(ds),
    }
    per_class, fig = pd.DataFrame(), None
    if len(gold_eval):
        scored = svm_scores["gold"].take(gold_eval["id"])
        gold_metrics, per_class, fig = gold_report(gold_eval["label"], scored.labels()[0], list(scored.classes), ds.multilabel)
        metrics.update(gold_metrics)
    if len(hidden_pool_labels) and len(pool_predictions):
        merged = pool_predictions.merge(hidden_pool_labels[["id", "label"]], on="id", suffixes=("", "_gold"))
        metrics["pool_accuracy"] = float((merged["label"] == merged["label_gold"]).mean())
    if day and inbox is not None and len(inbox):
        # drift signal of the night: how many new texts, how many went to the LLM, and how many the
        # retrained model labels with low confidence
        new = inbox[pd.to_datetime(inbox["day"]).dt.strftime("%Y-%m-%d") == day]
        params.update({"partition": day, "new_rows": len(new)})
        conf = svm_scores["inbox"].take(new["id"]).labels()[1] if len(new) else []
        metrics.update(drift_metrics(new, conf))
    return metrics, params, per_class, fig


def evaluation_check_specs(ds: DatasetConfig) -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey([ds.name, "evaluation"])
    return [
        dg.AssetCheckSpec(
            "macro_f1_drop",
            asset=key,
            description=f"Warns when macro-F1 drops by more than {ds.f1_drop_warning} against the previous evaluation run.",
        ),
        dg.AssetCheckSpec(
            "per_class_f1_floor",
            asset=key,
            description=f"Warns listing the classes whose gold F1 is under per_class_f1_min ({ds.per_class_f1_min}).",
        ),
    ]


def evaluation_checks(ds: DatasetConfig, metrics: dict, per_class: pd.DataFrame):
    """The evaluation's two checks: macro-F1 against the previous run, and the per-class F1 floor."""
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


def gold_checks(ds: DatasetConfig) -> list[dg.AssetChecksDefinition]:
    """Data checks on the ingested gold: no text shared with the seeds or the pool; every label seeded."""
    p = ds.name

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

    return [no_gold_leak, every_label_has_seed]


def model_assets(ds: DatasetConfig, sources: list[str]) -> list:
    return [
        training_set_asset(ds, sources),
        svm_model_asset(ds, sources),
        svm_scores_asset(ds, sources),
        pool_predictions_asset(ds),
        evaluation_asset(ds, sources),
        *gold_checks(ds),
    ]
