"""RAPT assets for multi-label datasets: rapt_case_base (LanceDB), rapt_predictions, rapt_evaluation.
The model's scores of the pool and the gold set come from ``svm_scores`` (scored once per run); the
text embeddings are the retrieval embedding. The work is in :mod:`labelflow.rapt`."""

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import label_lists
from labelflow.defs.resources import MLflowResource
from labelflow.defs.util import dataset_asset, md_figure, md_table, rounded
from labelflow.defs.vectors import all_vectors, vector_ins
from labelflow.embedding import EmbeddingIndex, unit_rows


def rapt_case_base_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    p = ds.name

    @dataset_asset(
        ds,
        "rapt_case_base",
        kinds={"lancedb"},
        ins=vector_ins(p, ds.inbox is not None),  # training texts may include nightly inbox texts
        io_manager_key="vectors_io_manager",
        description="One case per labelled training text (a RAPT CaseBase in LanceDB): id, embedding z, "
        "out-of-fold score vector (each case scored by a model that did not see it), gold vector, "
        "cardinality.",
    )
    def rapt_case_base(
        context: dg.AssetExecutionContext, svm_scores: dict, training_set: pd.DataFrame, **vectors: EmbeddingIndex
    ) -> dg.Output:
        from labelflow.rapt import CaseBase, binarize, out_of_fold_scores

        classes = list(svm_scores["gold"].classes)  # the model's label order
        X = all_vectors(vectors).lookup(training_set["id"])
        sets = label_lists(training_set["label"], True)
        folds = max(2, min(5, len(training_set) // 10))
        scores = out_of_fold_scores(X, sets, classes, folds=folds, seed=ds.seed)
        cb = CaseBase.build(training_set["id"].tolist(), X, scores, binarize(sets, classes), classes)
        return dg.Output(
            cb,
            metadata=rounded(
                {"cases": len(cb), "labels": len(classes), "folds": folds, "mean_cardinality": float(cb.cardinality.mean())}
            ),
        )

    return rapt_case_base


def rapt_predictions_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "rapt_predictions",
        kinds={"duckdb", "pandas"},
        description="Label sets for every pool text: RAPT-AvgCount (the default), RAPT-RankCal and the fixed 0.5 "
        "threshold side by side, with the adapted scores' top labels.",
    )
    def rapt_predictions(
        context: dg.AssetExecutionContext,
        svm_scores: dict,
        text_pool: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
        rapt_case_base,
    ) -> dg.Output:
        from labelflow.rapt import label_sets

        scored = svm_scores["pool"].take(text_pool["id"])
        classes = np.asarray(scored.classes)
        sets, t_rapt = label_sets(scored.proba, unit_rows(text_embeddings.lookup(text_pool["id"])), rapt_case_base)
        join = lambda Y: ["|".join(classes[row.astype(bool)]) for row in Y]  # noqa: E731
        out = text_pool[["id", "text"]].assign(
            label=join(sets["avgcount"]), label_rankcal=join(sets["rankcal"]), label_base05=join(sets["base05"])
        )
        n = max(len(out), 1)
        return dg.Output(
            out,
            metadata=rounded(
                {
                    "dagster/row_count": len(out),
                    "ms_per_text_classifier": 1000 * scored.seconds / n,
                    "ms_per_text_rapt_extra": 1000 * t_rapt / n,
                    "mean_labels_avgcount": float(sets["avgcount"].sum(1).mean()) if len(out) else 0.0,
                }
            ),
        )

    return rapt_predictions


def rapt_evaluation_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    p = ds.name

    @dataset_asset(
        ds,
        "rapt_evaluation",
        kinds={"mlflow"},
        description="Base0.5, Base* (one tuned threshold), Base*_l (per-label thresholds), RAPT-AvgCount and "
        "RAPT-RankCal on gold_eval: micro/macro-F1, precision, recall, Hamming loss, ms per text. "
        "Thresholds are tuned on the case base's out-of-fold scores (never on gold).",
    )
    def rapt_evaluation(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        svm_scores: dict,
        gold_eval: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
        rapt_case_base,
    ) -> dg.MaterializeResult:
        from labelflow.rapt import binarize, evaluate_scores, evaluation_figure

        cb = rapt_case_base
        if not len(gold_eval):
            return dg.MaterializeResult(metadata={"note": "no gold_eval rows: nothing to score"})
        gold = svm_scores["gold"].take(gold_eval["id"])
        Y = binarize(label_lists(gold_eval["label"], True), list(gold.classes))
        Z = unit_rows(text_embeddings.lookup(gold_eval["id"]))
        result = evaluate_scores(gold.proba, Z, Y, cb.scores, cb.gold, cb, score_seconds=gold.seconds)
        fig = evaluation_figure(result, f"{p}: RAPT vs static thresholds")
        best = result.sort_values("macro_f1", ascending=False).iloc[0]
        metrics = {}
        for _, r in result.iterrows():
            name = r["method"].replace("*", "star").replace(".", "").replace("-", "_")
            metrics.update({f"{name}_{c}": r[c] for c in ("micro_f1", "macro_f1", "hamming_loss", "ms_per_text")})
        run_id = mlflow.tracker().log_asset(
            p,
            "rapt_evaluation",
            dagster_run_id=context.run.run_id,
            metrics=metrics,
            tables={"rapt_methods.csv": result},
            figures={"rapt_methods.png": fig},
        )
        return dg.MaterializeResult(
            metadata=rounded(
                {
                    "methods": md_table(result),
                    "plot": md_figure(fig),
                    "best_method": str(best["method"]),
                    "best_macro_f1": float(best["macro_f1"]),
                    "mlflow_run_id": run_id,
                }
            )
        )

    return rapt_evaluation


def rapt_assets(ds: DatasetConfig) -> list:
    return [rapt_case_base_asset(ds), rapt_predictions_asset(ds), rapt_evaluation_asset(ds)]
