"""Label-trust assets: ``label_issues`` (confident learning on out-of-fold probabilities, upstream of the
training set) and ``calibration`` (ECE, Brier, reliability and risk-coverage of the emitted labels on
gold), with their checks. Thin: the work is in :mod:`labelflow.calibration` and
:mod:`labelflow.label_issues`."""

import dagster as dg
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import MLflowResource
from labelflow.defs.util import dataset_asset, md_figure, md_table, rounded
from labelflow.defs.vectors import all_vectors, vector_ins
from labelflow.embedding import EmbeddingIndex
from labelflow.tracking import log_figure, log_table, scalar_metrics
from labelflow.training import ScoreMatrix

ECE_MAX = 0.05
SEED_ISSUES_MAX = 0.05


def label_issues_asset(ds: DatasetConfig, sources: list[str]) -> dg.AssetsDefinition:
    p = ds.name
    key = dg.AssetKey([p, "label_issues"])

    @dataset_asset(
        ds,
        "label_issues",
        kinds={"duckdb", "pandas", "mlflow"},
        ins={**{name: dg.AssetIn(key=[p, name]) for name in sources}, **vector_ins(p, "inbox_queue" in sources)},
        check_specs=[
            dg.AssetCheckSpec(
                "seed_issues_share",
                asset=key,
                description=f"Warns when more than {SEED_ISSUES_MAX:.0%} of the gold seeds are suspected label errors.",
            )
        ],
        description="Suspected label errors by confident learning (cleanlab) on 5-fold out-of-fold probabilities "
        "of the product's classifier: the gold seeds on their own (scope=seeds) and the merged "
        "training labels (scope=training_set), most suspect first: id, text, label, suggested_label, "
        "quality, source. With drop_label_issues the training set leaves out suspect weak/LLM labels.",
    )
    def label_issues(context: dg.AssetExecutionContext, mlflow: MLflowResource, **upstream):
        from labelflow.defs.model import merge_sources

        vectors = all_vectors(upstream)
        upstream = {k: v for k, v in upstream.items() if k in sources}
        scopes = {"seeds": upstream["seed_labels"].assign(source="gold_seed"), "training_set": merge_sources(upstream)}
        table, counts = suspect_labels(ds, scopes, vectors, context.log)
        with mlflow.tracker().run(p, "label_issues", tags={"asset": "label_issues", "dagster_run_id": context.run.run_id}) as run:
            import mlflow as mlf

            mlf.log_metrics(scalar_metrics(counts))
            log_table(table, "label_issues.csv")
        context.log.info(
            f"label_issues: {len(table)} suspect labels ({ {k: v for k, v in counts.items() if 'suspect' in k and 'share' not in k} })"
        )
        meta = {
            "dagster/row_count": len(table),
            "mlflow_run_id": run.info.run_id,
            **{k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in counts.items()},
            "most_suspect": md_table(table.drop(columns=["text"]).head(30) if len(table) else table, 30),
        }
        yield dg.Output(table, metadata=rounded(meta))
        share = counts.get("seeds_suspect_share")
        yield dg.AssetCheckResult(
            check_name="seed_issues_share",
            passed=share is None or share <= SEED_ISSUES_MAX,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=rounded(
                {
                    "seeds_suspect_share": round(float(share or 0.0), 4),
                    "max_share": SEED_ISSUES_MAX,
                    "seeds_checked": int(counts.get("seeds_checked", 0)),
                }
            ),
        )

    return label_issues


def suspect_labels(ds: DatasetConfig, scopes: dict[str, pd.DataFrame], vectors: EmbeddingIndex, log) -> tuple[pd.DataFrame, dict]:
    """Confident learning on each scope's labelled rows (5-fold out-of-fold probabilities): (the suspect
    rows with a ``scope`` column, most suspect first within a scope; counts per scope). A scope that
    cannot be checked (e.g. a class with one example) is logged and counted as ``<scope>_not_checked``."""
    from labelflow.label_issues import ISSUE_COLUMNS, find_label_issues, out_of_fold_proba

    parts, counts = [], {}
    for scope, frame in scopes.items():
        counts[f"{scope}_checked"] = 0
        try:
            X = vectors.lookup(frame["id"])
            P, classes = out_of_fold_proba(X, frame["label"].tolist(), ds.multilabel, folds=5, seed=ds.seed)
        except ValueError as exc:
            log.warning(f"label_issues: {scope} not checked: {exc}")
            counts[f"{scope}_not_checked"] = str(exc)
            continue
        found = find_label_issues(frame, P, classes, ds.multilabel)
        counts[f"{scope}_checked"] = len(frame)
        counts[f"{scope}_suspect"] = len(found)
        counts[f"{scope}_suspect_share"] = len(found) / max(len(frame), 1)
        for src, n in found.groupby("source").size().items():
            counts[f"{scope}_suspect_{src}"] = int(n)
        parts.append(found.assign(scope=scope))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ISSUE_COLUMNS + ["scope"])
    table["quality"] = table["quality"].astype(float).round(4)
    return table, counts


def calibration_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    p = ds.name
    key = dg.AssetKey([p, "calibration"])

    @dataset_asset(
        ds,
        "calibration",
        kinds={"mlflow"},
        check_specs=[
            dg.AssetCheckSpec(
                "ece",
                asset=key,
                description=f"Warns when the expected calibration error of the labels is above "
                f"{ECE_MAX} (on gold, and on the hidden pool labels in benchmark mode).",
            )
        ],
        description="Is a confidence of 0.8 right 8 times in 10? On gold_eval (the model's labels; per (text, label) for "
        "multi-label) and, in benchmark mode, on the hidden pool labels per label_source: ECE (15 equal-mass "
        "bins), Brier, reliability diagram and risk-coverage (accuracy of the most confident 50-100 %), "
        "calibrated next to raw; one MLflow run with the plots.",
    )
    def calibration(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        svm_scores: dict,
        gold_eval: pd.DataFrame,
        pool_predictions: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
    ):
        from labelflow.calibration import calibration_report

        frames = confidence_evidence(ds, svm_scores["gold"], gold_eval, pool_predictions, hidden_pool_labels)
        table, figs, metrics = calibration_report(frames)
        with mlflow.tracker().run(p, "calibration", tags={"asset": "calibration", "dagster_run_id": context.run.run_id}) as run:
            import mlflow as mlf

            mlf.log_metrics(scalar_metrics(metrics))
            if len(table):
                log_table(table, "calibration.csv")
            for name, fig in figs.items():
                log_figure(fig, f"{name}.png")
        context.log.info(
            f"{p} calibration: " + ", ".join(f"{k}={v:.3f}" for k, v in scalar_metrics(metrics).items() if "ece" in k)
        )
        meta = {k: round(float(v), 4) for k, v in scalar_metrics(metrics).items()}
        meta["mlflow_run_id"] = run.info.run_id
        if len(table):
            meta["by_source"] = md_table(table.round(3), 40)
        for name, fig in figs.items():
            meta[name] = md_figure(fig, name.replace("_", " "))
        yield dg.MaterializeResult(metadata=rounded(meta))
        eces = {name: float(metrics[f"{name}_ece"]) for name in frames}
        over = {k: round(v, 4) for k, v in eces.items() if v > ECE_MAX}
        yield dg.AssetCheckResult(
            check_name="ece",
            passed=not over,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=rounded(
                {**{f"{k}_ece": round(v, 4) for k, v in eces.items()}, "max_ece": ECE_MAX, "over": dg.MetadataValue.json(over)}
            ),
        )

    return calibration


def confidence_evidence(
    ds: DatasetConfig,
    gold_scores: ScoreMatrix,
    gold_eval: pd.DataFrame,
    pool_predictions: pd.DataFrame,
    hidden_pool_labels: pd.DataFrame,
) -> dict[str, pd.DataFrame]:
    """The (confidence, correct) evidence :func:`labelflow.calibration.calibration_report` reads: ``gold``
    (the model's labels on gold_eval) and, in benchmark mode for a multi-class dataset, ``pool`` (the
    labelled pool against the hidden pool labels, per label_source)."""
    from labelflow.calibration import gold_confidence_frame, pool_confidence_frame

    frames = {}
    if len(gold_eval):
        frames["gold"] = gold_confidence_frame(gold_scores.take(gold_eval["id"]), gold_eval["label"])
    if len(hidden_pool_labels) and len(pool_predictions) and not ds.multilabel:
        frames["pool"] = pool_confidence_frame(pool_predictions, hidden_pool_labels)
    return frames


def trust_assets(ds: DatasetConfig, sources: list[str]) -> list:
    return [label_issues_asset(ds, sources), calibration_asset(ds)]
