"""RAPT assets for multi-label datasets: rapt_case_base (LanceDB), rapt_predictions, rapt_evaluation."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import label_lists
from labelflow.defs.resources import MLflowResource, StoresResource
from labelflow.defs.util import OWNERS, md_figure, md_table, text_tables
from labelflow.tracking import log_figure, log_table, scalar_metrics


def _backbone(model):
    """The trained svm_model wrapped as a RAPT scorer (embedding z = the text embedding, score vector =
    the calibrated one-vs-rest scores)."""
    from labelflow.rapt import ScoredBackbone

    return ScoredBackbone.from_fitted(model)


def rapt_assets(ds: DatasetConfig) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731
    table = f"{p}__rapt_case_base"

    @dg.asset(key=key("rapt_case_base"), group_name=p, kinds={"lancedb"}, owners=owners,
              deps=[key("text_embeddings")],
              description="One case per labelled training text in LanceDB: id, embedding z, out-of-fold score vector "
                          "(each case scored by a model that did not see it), gold vector, cardinality.")
    def rapt_case_base(context: dg.AssetExecutionContext, stores: StoresResource, svm_model,
                       training_set: pd.DataFrame) -> dg.MaterializeResult:
        from labelflow.rapt import CaseBase, binarize, out_of_fold_scores

        classes = list(_backbone(svm_model).classes_)
        X = stores.vectors().vectors_for(text_tables(p), training_set["id"])
        sets = label_lists(training_set["label"], True)
        folds = max(2, min(5, len(training_set) // 10))
        scores = out_of_fold_scores(X, sets, classes, folds=folds, seed=ds.seed)
        cb = CaseBase.build(training_set["id"].tolist(), X, scores, binarize(sets, classes), classes)
        cb.save(stores.vectors(), table)
        return dg.MaterializeResult(metadata={"cases": len(cb), "labels": len(classes), "folds": folds,
                                              "mean_cardinality": float(cb.cardinality.mean()), "lancedb_table": table})

    @dg.asset(key=key("rapt_predictions"), group_name=p, kinds={"duckdb", "pandas"}, owners=owners,
              deps=[key("rapt_case_base")],
              description="Label sets for every pool text: RAPT-AvgCount (the default), RAPT-RankCal and the fixed 0.5 "
                          "threshold side by side, with the adapted scores' top labels.")
    def rapt_predictions(context: dg.AssetExecutionContext, stores: StoresResource, svm_model,
                         text_pool: pd.DataFrame) -> dg.Output:
        from labelflow.rapt import RAPT, CaseBase, base_threshold

        scorer = _backbone(svm_model)
        classes = np.asarray(scorer.classes_)
        cb = CaseBase.load(stores.vectors(), list(classes), table)
        X = stores.vectors().vectors_for(text_tables(p), text_pool["id"])
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
        return dg.Output(out, metadata={"dagster/row_count": len(out), "ms_per_text_classifier": 1000 * t_score / n,
                                        "ms_per_text_rapt_extra": 1000 * t_rapt / n,
                                        "mean_labels_avgcount": float(avg.sum(1).mean()) if len(out) else 0.0})

    @dg.asset(key=key("rapt_evaluation"), group_name=p, kinds={"mlflow"}, owners=owners,
              deps=[key("rapt_case_base")],
              description="Base0.5, Base* (one tuned threshold), Base*_l (per-label thresholds), RAPT-AvgCount and "
                          "RAPT-RankCal on gold_eval: micro/macro-F1, precision, recall, Hamming loss, ms per text. "
                          "Thresholds are tuned on the case base's out-of-fold scores (never on gold).")
    def rapt_evaluation(context: dg.AssetExecutionContext, stores: StoresResource, mlflow: MLflowResource,
                        svm_model, gold_eval: pd.DataFrame) -> dg.MaterializeResult:
        from labelflow.rapt import CaseBase, binarize, evaluate_all, evaluation_figure

        scorer = _backbone(svm_model)
        classes = list(scorer.classes_)
        cb = CaseBase.load(stores.vectors(), classes, table)
        if not len(gold_eval):
            return dg.MaterializeResult(metadata={"note": "no gold_eval rows: nothing to score"})
        X = stores.vectors().vectors_for(text_tables(p), gold_eval["id"])
        Y = binarize(label_lists(gold_eval["label"], True), classes)
        result = evaluate_all(scorer, X, Y, cb.Z, cb.gold, cb, S_val=cb.scores)
        fig = evaluation_figure(result, f"{p}: RAPT vs static thresholds")
        best = result.sort_values("macro_f1", ascending=False).iloc[0]
        with mlflow.tracker().run(p, "rapt_evaluation", tags={"asset": "rapt_evaluation", "dagster_run_id": context.run.run_id}) as run:
            import mlflow as mlf

            for _, r in result.iterrows():
                name = r["method"].replace("*", "star").replace(".", "").replace("-", "_")
                mlf.log_metrics(scalar_metrics({f"{name}_{c}": r[c] for c in ("micro_f1", "macro_f1", "hamming_loss", "ms_per_text")}))
            log_table(result, "rapt_methods.csv")
            log_figure(fig, "rapt_methods.png")
        return dg.MaterializeResult(metadata={"methods": md_table(result), "plot": md_figure(fig),
                                              "best_method": str(best["method"]), "best_macro_f1": float(best["macro_f1"]),
                                              "mlflow_run_id": run.info.run_id})

    return [rapt_case_base, rapt_predictions, rapt_evaluation]
