"""Label-trust assets: ``label_issues`` (confident learning on out-of-fold probabilities, upstream of the
training set) and ``calibration`` (ECE, Brier, reliability and risk-coverage of the emitted labels on
gold), with their checks; and the calibrators the training set uses. Thin: the work is in
:mod:`labelflow.calibration` and :mod:`labelflow.label_issues`."""

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.defs.resources import MLflowResource
from labelflow.defs.util import OWNERS, md_figure, md_table, rounded
from labelflow.defs.vectors import all_vectors, vector_ins
from labelflow.embedding import EmbeddingIndex
from labelflow.labelspace import LabelSpace
from labelflow.tracking import log_figure, log_table, scalar_metrics

ECE_MAX = 0.05
SEED_ISSUES_MAX = 0.05


def source_calibrators(
    ds: DatasetConfig,
    label_space: LabelSpace,
    lf_definitions: pd.DataFrame | None,
    seed_labels: pd.DataFrame,
    pilot_validation: pd.DataFrame | None,
    tables: dict | None = None,
) -> tuple[object, object, dict]:
    """(LLM calibrator, weak-label calibrator, metadata). LLM labels: the pilot answers plus, once people
    have reviewed, the LLM labels (``rac_labels``, ``inbox_rac_labels``, ``red_labels``) of reviewed texts;
    weak labels: the seed-CV evidence plus the weak labels (``llm_queue``, ``inbox_queue``) of reviewed
    texts. ``tables`` holds those upstream tables and ``human_labels``; reviews make confidence better."""
    from labelflow.calibration import (
        ScoreCalibrator,
        human_evidence,
        llm_calibrator,
        product_weak_labeller,
        weak_seed_evidence,
    )
    from labelflow.review import effective_human_labels

    tables = tables or {}
    human = effective_human_labels(tables.get("human_labels"))

    def reviewed(names) -> pd.DataFrame:
        parts = [human_evidence(tables.get(n), human) for n in names if tables.get(n) is not None]
        return pd.concat(parts, ignore_index=True) if parts else human_evidence(None, None)

    meta: dict = {}
    answers = (
        pilot_validation["answers"].iloc[0]
        if pilot_validation is not None and len(pilot_validation) and "answers" in pilot_validation
        else None
    )
    llm_reviewed = reviewed(("rac_labels", "inbox_rac_labels", "red_labels"))
    meta["llm_reviewed_evidence"] = len(llm_reviewed)
    llm = llm_calibrator(answers, llm_reviewed)
    meta["llm_calibration"] = llm.describe() if llm is not None else "none (no pilot answers): raw confidence"
    weak = None
    if len(seed_labels) >= 4 and label_space.description_X is not None:
        seeds = pd.DataFrame(
            {"id": label_space.seed_ids, "text": label_space.seed_texts, "label": ["|".join(s) for s in label_space.seed_sets]}
        )
        labeller = product_weak_labeller(
            seeds,
            label_space.seed_X,
            label_space.labels,
            label_space.description_X,
            lf_definitions,
            ds.label_model,
            ds.multilabel,
        )
        ev = weak_seed_evidence(seeds, labeller, folds=5, seed=ds.seed)
    else:
        ev = human_evidence(None, None)
    weak_reviewed = reviewed(("llm_queue", "inbox_queue"))
    meta["weak_reviewed_evidence"] = len(weak_reviewed)
    ev = pd.concat(
        [e for e in (ev[["confidence", "correct"]], weak_reviewed[["confidence", "correct"]]) if len(e)] or [ev],
        ignore_index=True,
    )
    if len(ev):
        weak = ScoreCalibrator().fit(ev["confidence"].astype(float), ev["correct"].astype(bool))
    where = "seed cross-validation" + (f" + {len(weak_reviewed)} reviewed texts" if len(weak_reviewed) else "")
    meta["weak_calibration"] = weak.describe() + f" ({where})" if weak is not None else "none: raw confidence"
    return llm, weak, meta


def trust_assets(ds: DatasetConfig, sources: list[str]) -> list:
    p = ds.name
    owners = ds.owners or OWNERS
    key = lambda name: dg.AssetKey([p, name])  # noqa: E731

    @dg.asset(
        key=key("label_issues"),
        group_name=p,
        kinds={"duckdb", "pandas", "mlflow"},
        owners=owners,
        ins={**{name: dg.AssetIn(key=[p, name]) for name in sources}, **vector_ins(p, "inbox_queue" in sources)},
        check_specs=[
            dg.AssetCheckSpec(
                "seed_issues_share",
                asset=key("label_issues"),
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
        from labelflow.label_issues import ISSUE_COLUMNS, find_label_issues, out_of_fold_proba

        vectors = all_vectors(upstream)
        upstream = {k: v for k, v in upstream.items() if k in sources}
        seeds = upstream["seed_labels"].assign(source="gold_seed")
        merged = merge_sources(upstream)
        parts, counts = [], {}
        for scope, frame in (("seeds", seeds), ("training_set", merged)):
            counts[f"{scope}_checked"] = 0
            try:
                X = vectors.lookup(frame["id"])
                P, classes = out_of_fold_proba(X, frame["label"].tolist(), ds.multilabel, folds=5, seed=ds.seed)
            except ValueError as exc:
                context.log.warning(f"label_issues: {scope} not checked: {exc}")
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

    @dg.asset(
        key=key("calibration"),
        group_name=p,
        kinds={"mlflow"},
        owners=owners,
        ins={"svm_model": dg.AssetIn(key=[p, "svm_model"]), "text_embeddings": dg.AssetIn(key=[p, "text_embeddings"])},
        check_specs=[
            dg.AssetCheckSpec(
                "ece",
                asset=key("calibration"),
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
        svm_model,
        text_embeddings: EmbeddingIndex,
        gold_eval: pd.DataFrame,
        pool_predictions: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
    ):
        from labelflow.calibration import calibration_table, reliability_figure, risk_coverage_figure
        from labelflow.data import split_labels
        from labelflow.training import predict_with_confidence

        frames = {}
        if len(gold_eval):
            X = text_embeddings.lookup(gold_eval["id"])
            if ds.multilabel:
                classes = list(svm_model.classes_)
                P = svm_model.predict_proba(X)
                Y = np.array([[c in split_labels(v) for c in classes] for v in gold_eval["label"]])
                frames["gold"] = pd.DataFrame(
                    {
                        "confidence": P.ravel(),
                        "confidence_raw": P.ravel(),
                        "correct": Y.ravel(),
                        "source": "model (per text, label)",
                    }
                )
            else:
                labels, cal, raw = predict_with_confidence(svm_model, X, False)
                frames["gold"] = pd.DataFrame(
                    {
                        "confidence": cal,
                        "confidence_raw": raw,
                        "source": "model",
                        "correct": np.asarray(labels) == gold_eval["label"].to_numpy(),
                    }
                )
        if len(hidden_pool_labels) and len(pool_predictions) and not ds.multilabel:
            m = pool_predictions.merge(hidden_pool_labels[["id", "label"]], on="id", suffixes=("", "_gold"))
            raw = m["confidence_raw"] if "confidence_raw" in m else m["confidence"]
            frames["pool"] = pd.DataFrame(
                {
                    "confidence": m["confidence"].astype(float),
                    "confidence_raw": raw.astype(float),
                    "source": m["label_source"],
                    "correct": m["label"] == m["label_gold"],
                }
            )
        tables, figs, metrics = [], {}, {}
        for name, f in frames.items():
            t = calibration_table(f, extra=["confidence_raw"]).assign(evaluated_on=name)
            tables.append(t)
            overall = t.iloc[0]
            metrics.update(
                {
                    f"{name}_{k}": float(overall[k])
                    for k in (
                        "n",
                        "accuracy",
                        "mean_confidence",
                        "ece",
                        "brier",
                        "ece_confidence_raw",
                        "brier_confidence_raw",
                        "acc_at_50",
                        "acc_at_80",
                        "acc_at_100",
                    )
                }
            )
            groups = {"all": (f["confidence"], f["correct"]), "all, raw": (f["confidence_raw"], f["correct"])}
            if f["source"].nunique() > 1:
                groups.update({str(s): (g["confidence"], g["correct"]) for s, g in f.groupby("source")})
            figs[f"{name}_reliability"] = reliability_figure(groups, title=f"Reliability on {name} (15 equal-mass bins)")
            figs[f"{name}_risk_coverage"] = risk_coverage_figure(
                {k: v for k, v in groups.items() if k != "all, raw"}, title=f"Risk-coverage on {name}"
            )
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
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

    return [label_issues, calibration]
