"""Model assets: training_set, svm_model, pool_predictions, evaluation, and the data checks."""


import joblib
import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import MLflowResource, StoresResource
from labelflow.defs.util import OWNERS, md_figure, md_table, text_tables
from labelflow.merge import merge_by_priority
from labelflow.metrics import classification_metrics, confusion_figure, multilabel_metrics, per_class_table
from labelflow.tracking import config_hash, git_commit, log_figure, log_table, scalar_metrics
from labelflow.training import fit_classifier, predict_labels

# Sources of training labels, highest priority first. Each is an upstream asset with (id, text, label,
# confidence) rows; only the rows it marks as usable (see `usable_rows`) enter the training set.
SOURCE_PRIORITY = [("seed_labels", "gold_seed"), ("rac_labels", "llm"), ("inbox_rac_labels", "llm"), ("red_labels", "llm-red"),
                   ("llm_queue", "weak-confident"), ("inbox_queue", "weak-confident")]


def usable_rows(name: str, df: pd.DataFrame) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=["id", "text", "label", "confidence"])
    if name == "seed_labels":
        return df.assign(confidence=1.0)
    if name in ("llm_queue", "inbox_queue"):  # routed weak labels: only the kept bucket is used without the LLM
        df = df[df["bucket"] == "weak_confident"]
    return df[df["label"].astype(str) != ""]


def model_assets(ds: DatasetConfig, sources: list[str]) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    model_file = "svm.joblib"
    ins = {name: dg.AssetIn(key=[p, name]) for name in sources}

    @dg.asset(key=[p, "training_set"], group_name=p, kinds={"duckdb", "pandas"}, owners=owners, ins=ins,
              description="Merged training labels by source priority (gold seed > LLM-verified (RAC, R.E.D.) > "
                          "weak-confident), one row per text: id, text, label, source, confidence.")
    def training_set(context: dg.AssetExecutionContext, **upstream: pd.DataFrame) -> dg.Output:
        frames: dict[str, list[pd.DataFrame]] = {}
        for name, source in SOURCE_PRIORITY:  # dicts keep the priority order; nightly rows join their source
            if name in upstream:
                frames.setdefault(source, []).append(usable_rows(name, upstream[name]))
        merged = merge_by_priority([(source, pd.concat([d for d in dfs if len(d)] or dfs[:1], ignore_index=True))
                                    for source, dfs in frames.items()])
        by_source = merged.groupby("source").size().to_dict()
        context.log.info(f"training set: {len(merged)} rows by source {by_source}")
        return dg.Output(merged, metadata={"dagster/row_count": len(merged), **{f"rows_{k}": int(v) for k, v in by_source.items()}})

    @dg.asset(key=[p, "svm_model"], group_name=p, kinds={"scikitlearn", "mlflow"}, owners=owners,
              deps=[dg.AssetKey([p, "text_embeddings"])],
              description=("One-vs-rest calibrated LinearSVCs" if ds.multilabel else "LinearSVC, balanced class weights, "
                           "calibrated probabilities") + " on the text embeddings; logged to MLflow as a model.")
    def svm_model(context: dg.AssetExecutionContext, stores: StoresResource, mlflow: MLflowResource,
                  training_set: pd.DataFrame) -> dg.MaterializeResult:
        X = stores.vectors().vectors_for(text_tables(p), training_set["id"])
        weights = training_set["confidence"].astype(float).clip(0.05, 1.0).to_numpy() if not ds.multilabel else None
        model = fit_classifier(training_set["label"], X, ds.multilabel, sample_weight=weights)
        path = stores.model_dir(p) / model_file
        joblib.dump(model, path)
        tracker = mlflow.tracker()
        import mlflow as mlf
        import mlflow.sklearn

        with tracker.run(p, "svm_model", tags={"asset": "svm_model", "dagster_run_id": context.run.run_id}) as run:
            params = {"rows": len(training_set), "classes": len(model.classes_), "multilabel": ds.multilabel,
                      "git_commit": git_commit(), "config_hash": config_hash(ds)}
            params.update({f"rows_{k}": v for k, v in training_set.groupby("source").size().items()})
            mlf.log_params(params)
            # cloudpickle: the model is a labelflow estimator (skops would refuse its types); pip
            # requirements are given so MLflow does not try to infer them from a package index.
            mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                     pip_requirements=["labelflow", "scikit-learn==1.9.1"])
        context.log.info(f"trained on {len(training_set)} rows, {len(model.classes_)} classes; MLflow run {run.info.run_id}")
        return dg.MaterializeResult(metadata={"model_path": str(path), "mlflow_run_id": run.info.run_id,
                                              "rows": len(training_set), "classes": len(model.classes_),
                                              "calibration": getattr(model, "calibration_", "per-label sigmoid")})

    @dg.asset(key=[p, "pool_predictions"], group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[dg.AssetKey([p, "svm_model"])],
              description="The labelled dataset: the model's label and confidence for every pool text "
                          "(export with `labelflow export`).")
    def pool_predictions(context: dg.AssetExecutionContext, stores: StoresResource, text_pool: pd.DataFrame,
                         training_set: pd.DataFrame) -> dg.Output:
        model = joblib.load(stores.model_dir(p) / model_file)
        if len(text_pool) == 0:
            return dg.Output(pd.DataFrame(columns=["id", "text", "label", "confidence", "label_source"]), metadata={"dagster/row_count": 0})
        X = stores.vectors().vectors_for(text_tables(p), text_pool["id"])
        labels, conf = predict_labels(model, X, ds.multilabel)
        out = text_pool[["id", "text"]].assign(label=labels, confidence=conf)
        src = training_set.set_index("id")["source"]
        out["label_source"] = out["id"].map(src).fillna("model")
        low = float((out["confidence"] < 0.5).mean())
        dist = out.assign(label=out["label"].str.split("|")).explode("label").groupby("label").size().rename("texts").reset_index()
        return dg.Output(out, metadata={"dagster/row_count": len(out), "low_confidence_share": low,
                                        "label_distribution": md_table(dist.sort_values("texts", ascending=False), 50)})

    eval_ins = {"inbox_queue": dg.AssetIn(key=[p, "inbox_queue"])} if "inbox_queue" in sources else {}

    @dg.asset(key=[p, "evaluation"], group_name=p, kinds={"mlflow"}, owners=owners,
              deps=[dg.AssetKey([p, "svm_model"])], ins=eval_ins,
              check_specs=[dg.AssetCheckSpec("macro_f1_drop", asset=dg.AssetKey([p, "evaluation"]),
                                             description=f"Warns when macro-F1 drops by more than {ds.f1_drop_warning} "
                                                         "against the previous evaluation run.")],
              description="The model scored on gold_eval (accuracy, micro/macro-F1, per-class F1, confusion matrix), "
                          "and on the hidden pool labels in benchmark mode; one MLflow run per materialisation.")
    def evaluation(context: dg.AssetExecutionContext, stores: StoresResource, mlflow: MLflowResource,
                   gold_eval: pd.DataFrame, pool_predictions: pd.DataFrame, hidden_pool_labels: pd.DataFrame,
                   training_set: pd.DataFrame, **nightly: pd.DataFrame):
        model = joblib.load(stores.model_dir(p) / model_file)
        metrics: dict = {}
        params: dict = {}
        per_class = pd.DataFrame()
        fig = None
        if len(gold_eval):
            X = stores.vectors().vectors_for(text_tables(p), gold_eval["id"])
            pred, _ = predict_labels(model, X, ds.multilabel)
            if ds.multilabel:
                classes = list(model.classes_)
                Yt = _indicator(gold_eval["label"], classes)
                Yp = _indicator(pd.Series(pred), classes)
                metrics.update(multilabel_metrics(Yt, Yp))
                from sklearn.metrics import precision_recall_fscore_support

                pr, rc, f1, sup = precision_recall_fscore_support(Yt, Yp, zero_division=0)
                per_class = pd.DataFrame({"label": classes, "precision": pr, "recall": rc, "f1": f1, "support": sup}).sort_values("f1")
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
            metrics["new_texts"] = len(new)
            metrics["llm_queue_size"] = int(new["queued"].sum()) if len(new) else 0
            if len(new):
                _, conf = predict_labels(model, stores.vectors().vectors_for(text_tables(p), new["id"]), ds.multilabel)
                metrics["new_low_confidence_share"] = float((np.asarray(conf) < 0.5).mean())
        metrics["training_rows"] = len(training_set)
        metrics["pool_low_confidence_share"] = float((pool_predictions["confidence"] < 0.5).mean()) if len(pool_predictions) else 0.0
        tracker = mlflow.tracker()
        import mlflow as mlf

        previous = tracker.previous_runs(p, "evaluation", n=1)
        with tracker.run(p, "evaluation", tags={"asset": "evaluation", "dagster_run_id": context.run.run_id}) as run:
            mlf.log_params({"gold_rows": len(gold_eval), "multilabel": ds.multilabel, "git_commit": git_commit(),
                            "config_hash": config_hash(ds), "pool_rows": len(pool_predictions),
                            "training_rows": len(training_set), **params})
            mlf.log_metrics(scalar_metrics(metrics))
            if len(previous) and "metrics.macro_f1" in previous and "macro_f1" in metrics:
                delta = metrics["macro_f1"] - float(previous["metrics.macro_f1"].iloc[0])
                metrics["macro_f1_delta"] = delta
                mlf.log_metric("macro_f1_delta", delta)
            if len(per_class):
                log_table(per_class, "per_class.csv")
            if fig is not None:
                log_figure(fig, "confusion_matrix.png")
        context.log.info(f"{p} evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in scalar_metrics(metrics).items()))
        meta = {k: float(v) for k, v in scalar_metrics(metrics).items()}
        meta["mlflow_run_id"] = run.info.run_id
        if len(per_class):
            meta["per_class_f1"] = md_table(per_class, 100)
        if fig is not None:
            meta["confusion_matrix"] = md_figure(fig, "confusion matrix")
        yield dg.MaterializeResult(metadata=meta)
        delta = metrics.get("macro_f1_delta")
        yield dg.AssetCheckResult(check_name="macro_f1_drop", passed=delta is None or delta >= -ds.f1_drop_warning,
                                  severity=dg.AssetCheckSeverity.WARN,
                                  metadata={"macro_f1_delta": float(delta) if delta is not None else 0.0,
                                            "allowed_drop": ds.f1_drop_warning,
                                            "previous_run": "none" if delta is None else "compared"})

    @dg.asset_check(asset=dg.AssetKey([p, "gold_eval"]), additional_ins={"seed_labels": dg.AssetIn(key=[p, "seed_labels"]),
                                                                         "text_pool": dg.AssetIn(key=[p, "text_pool"])},
                    description="No text is shared between the seeds or the pool and the gold test set.")
    def no_gold_leak(gold_eval: pd.DataFrame, seed_labels: pd.DataFrame, text_pool: pd.DataFrame) -> dg.AssetCheckResult:
        gold = set(gold_eval["text"].str.strip().str.lower())
        seed_hits = sorted(set(seed_labels["text"].str.strip().str.lower()) & gold)
        pool_hits = sorted(set(text_pool["text"].str.strip().str.lower()) & gold)
        return dg.AssetCheckResult(passed=not seed_hits and not pool_hits, metadata={
            "seed_texts_in_gold": len(seed_hits), "pool_texts_in_gold": len(pool_hits),
            "examples": dg.MetadataValue.json((seed_hits + pool_hits)[:5])})

    @dg.asset_check(asset=dg.AssetKey([p, "seed_labels"]), additional_ins={"gold_eval": dg.AssetIn(key=[p, "gold_eval"])},
                    description="Every label (of the seeds and the gold set) has at least one seed example.")
    def every_label_has_seed(seed_labels: pd.DataFrame, gold_eval: pd.DataFrame) -> dg.AssetCheckResult:
        seeded = set(seed_labels["label"].str.split("|").explode())
        gold = set(gold_eval["label"].str.split("|").explode()) if len(gold_eval) else set()
        missing = sorted(gold - seeded)
        return dg.AssetCheckResult(passed=not missing, metadata={"labels": len(seeded), "labels_without_seed": dg.MetadataValue.json(missing)})

    return [training_set, svm_model, pool_predictions, evaluation, no_gold_leak, every_label_has_seed]


def _indicator(values: pd.Series, classes: list[str]) -> np.ndarray:
    from sklearn.preprocessing import MultiLabelBinarizer

    return MultiLabelBinarizer(classes=classes).fit_transform([[v for v in s.split("|") if v in classes] for s in values])
