"""RAPT assets for multi-label datasets: rapt_case_base (LanceDB), rapt_predictions, rapt_evaluation."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import label_lists
from labelflow.defs.resources import MLflowResource
from labelflow.defs.util import OWNERS, md_figure, md_table, rounded
from labelflow.defs.vectors import all_vectors, vector_ins
from labelflow.embedding import EmbeddingIndex


def _backbone(model):
    """The trained svm_model wrapped as a RAPT scorer (embedding z = the text embedding, score vector =
    the calibrated one-vs-rest scores)."""
    from labelflow.rapt import ScoredBackbone

    return ScoredBackbone.from_fitted(model)


def rapt_assets(ds: DatasetConfig) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731
    vec_ins = vector_ins(p, ds.inbox is not None)  # training texts may include nightly inbox texts

    @dg.asset(
        key=key("rapt_case_base"),
        group_name=p,
        kinds={"lancedb"},
        owners=owners,
        ins=vec_ins,
        io_manager_key="vectors_io_manager",
        description="One case per labelled training text (a RAPT CaseBase in LanceDB): id, embedding z, "
        "out-of-fold score vector (each case scored by a model that did not see it), gold vector, "
        "cardinality.",
    )
    def rapt_case_base(
        context: dg.AssetExecutionContext, svm_model, training_set: pd.DataFrame, **vectors: EmbeddingIndex
    ) -> dg.Output:
        from labelflow.rapt import CaseBase, binarize, out_of_fold_scores

        classes = list(_backbone(svm_model).classes_)
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

    @dg.asset(
        key=key("rapt_predictions"),
        group_name=p,
        kinds={"duckdb", "pandas"},
        owners=owners,
        description="Label sets for every pool text: RAPT-AvgCount (the default), RAPT-RankCal and the fixed 0.5 "
        "threshold side by side, with the adapted scores' top labels.",
    )
    def rapt_predictions(
        context: dg.AssetExecutionContext, svm_model, text_pool: pd.DataFrame, text_embeddings: EmbeddingIndex, rapt_case_base
    ) -> dg.Output:
        from labelflow.rapt import RAPT, base_threshold

        scorer = _backbone(svm_model)
        classes = np.asarray(scorer.classes_)
        cb = rapt_case_base
        X = text_embeddings.lookup(text_pool["id"])
        t0 = time.perf_counter()
        S = scorer.score(X)
        t_score = time.perf_counter() - t0
        rapt = RAPT(k=10, n_distinct=3).fit(cb)
        t1 = time.perf_counter()
        nb = rapt.kneighbors(scorer.embed(X))
        adapted = rapt.adapt(scorer.embed(X), S, nb)
        avg = rapt.decide(adapted, nb, "avgcount")
        rank = rapt.decide(adapted, nb, "rankcal")
        t_rapt = time.perf_counter() - t1
        base = base_threshold(S, 0.5)
        join = lambda Y: ["|".join(classes[row.astype(bool)]) for row in Y]  # noqa: E731
        out = text_pool[["id", "text"]].assign(label=join(avg), label_rankcal=join(rank), label_base05=join(base))
        n = max(len(out), 1)
        return dg.Output(
            out,
            metadata=rounded(
                {
                    "dagster/row_count": len(out),
                    "ms_per_text_classifier": 1000 * t_score / n,
                    "ms_per_text_rapt_extra": 1000 * t_rapt / n,
                    "mean_labels_avgcount": float(avg.sum(1).mean()) if len(out) else 0.0,
                }
            ),
        )

    @dg.asset(
        key=key("rapt_evaluation"),
        group_name=p,
        kinds={"mlflow"},
        owners=owners,
        description="Base0.5, Base* (one tuned threshold), Base*_l (per-label thresholds), RAPT-AvgCount and "
        "RAPT-RankCal on gold_eval: micro/macro-F1, precision, recall, Hamming loss, ms per text. "
        "Thresholds are tuned on the case base's out-of-fold scores (never on gold).",
    )
    def rapt_evaluation(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        svm_model,
        gold_eval: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
        rapt_case_base,
    ) -> dg.MaterializeResult:
        from labelflow.rapt import binarize, evaluate_all, evaluation_figure

        scorer = _backbone(svm_model)
        classes = list(scorer.classes_)
        cb = rapt_case_base
        if not len(gold_eval):
            return dg.MaterializeResult(metadata={"note": "no gold_eval rows: nothing to score"})
        X = text_embeddings.lookup(gold_eval["id"])
        Y = binarize(label_lists(gold_eval["label"], True), classes)
        result = evaluate_all(scorer, X, Y, cb.Z, cb.gold, cb, S_val=cb.scores)
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

    return [rapt_case_base, rapt_predictions, rapt_evaluation]
