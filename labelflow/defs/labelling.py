"""Labelling assets: label_descriptions, label_embeddings, label_space, pilot_validation,
weak_label_matrix, weak_labels, llm_queue, rac_labels, red_labels. One module-level builder per asset
(taking the dataset's :class:`~labelflow.config.DatasetConfig`), composed by :func:`labelling_assets`.
Each asset loads its inputs, calls the library, writes the result and attaches metadata; every asset
that spends LLM calls records calls, tokens, cost and time."""

import json

import dagster as dg
import numpy as np
import pandas as pd

from labelflow.config import DatasetConfig
from labelflow.data import label_lists
from labelflow.defs.resources import (
    ComputeResource,
    EmbedderResource,
    ExpertResource,
    MLflowResource,
    StoresResource,
    budget_metadata,
)
from labelflow.expert import DescribeWithinBudget
from labelflow.defs.util import dataset_asset, md_figure, md_table, rounded, usage_metadata
from labelflow.defs.vectors import embed
from labelflow.embedding import EmbeddingIndex
from labelflow.labelspace import LabelSpace

# the pilot's figures in its table row, metadata and MLflow metrics
PILOT_SUMMARY = (
    "expert",
    "n",
    "accuracy",
    "precision_yes",
    "recall_yes",
    "threshold_default",
    "threshold",
    "accuracy_calibrated",
    "accuracy_calibrated_cv",
    "accuracy_label_calibrated_cv",
    "gate_accuracy",
    "unparseable",
    "calls",
    "seconds",
    "seconds_per_validation",
    "passed",
)


def _hidden_truth(hidden_pool_labels: pd.DataFrame) -> pd.Series | None:
    """Benchmark mode only: the pool's hidden gold labels (id -> label) for scoring, else None."""
    return hidden_pool_labels.set_index("id")["label"] if len(hidden_pool_labels) else None


def label_descriptions_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "label_descriptions",
        {"duckdb", "pandas"},
        "One description per label: the user's from labels.csv (source=user) or written by the "
        "LLM from the label name, seed examples and its nearest labels (source=llm); with refine_descriptions "
        "the expert then rewrites each non-user description to tell it apart from its confusable labels "
        "(source=llm_refined).",
    )
    def label_descriptions(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        seed_labels: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
        user_label_descriptions: pd.DataFrame,
    ) -> dg.Output:
        from labelflow.descriptions import describe_labels, refine_descriptions

        labels = sorted({lab for labs in label_lists(seed_labels["label"], ds.multilabel) for lab in labs})
        user = user_label_descriptions[["label", "description"]]  # validated at ingestion
        centroids = LabelSpace.build(seed_labels, text_embeddings, ds.multilabel).centroid_map()
        missing = len(set(labels) - set(user["label"]))
        context.log.info(f"{len(user)} user descriptions; writing {missing} with the expert")
        budget = expert.run_budget(context.run.run_id, ds.name, ds.llm_budget_calls)
        llm = expert.get(budget=budget) if missing or ds.refine_descriptions else None
        exp = DescribeWithinBudget(llm) if missing else None
        out = (
            describe_labels(labels, seed_labels, user, exp, label_vectors=centroids, multilabel=ds.multilabel)
            if missing
            else user.assign(source="user", model="")
        )
        if ds.refine_descriptions:
            out = refine_descriptions(out, seed_labels, llm, label_vectors=centroids, multilabel=ds.multilabel)
        meta = {
            "dagster/row_count": len(out),
            "by_source": dg.MetadataValue.json(out["source"].value_counts().to_dict()),
            "descriptions": md_table(out[["label", "source", "description"]], 100),
        }
        if llm is not None:
            meta.update(usage_metadata(llm.usage))
            meta.update(budget_metadata(budget))
            # past the run's LLM budget a description falls back to the label name (source label_name),
            # and a refinement keeps the description it had
            meta["past_budget"] = dg.MetadataValue.json((exp.past_budget if exp else []) + out.attrs.get("past_budget", []))
        return dg.Output(out, metadata=rounded(meta))

    return label_descriptions


def label_embeddings_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "label_embeddings",
        {"lancedb"},
        "Embeddings of 'label: description' per label: an EmbeddingIndex keyed by label, stored in "
        "LanceDB (id = label, label, text, text_hash, model, vector).",
        io_manager_key="vectors_io_manager",
    )
    def label_embeddings(
        context: dg.AssetExecutionContext, stores: StoresResource, embedder: EmbedderResource, label_descriptions: pd.DataFrame
    ) -> dg.Output:
        labels = label_descriptions["label"].astype(str).tolist()
        texts = [f"{lab.replace('_', ' ')}: {d}" for lab, d in zip(labels, label_descriptions["description"])]
        index, reused = embed(stores.lancedb_uri, embedder.get(), labels, texts, pd.DataFrame({"label": labels, "text": texts}))
        return dg.Output(index, metadata={"labels": len(texts), "reused": reused})

    return label_embeddings


def label_space_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "label_space",
        {"python"},
        "The label space, built once per run: labels, seeds by label, seed centroids, descriptions "
        "(the label name where none) and description vectors; RAC, R.E.D., the embedding labelling "
        "functions and the pilot read it.",
        io_manager_key="values_io_manager",
    )
    def label_space(
        seed_labels: pd.DataFrame,
        text_embeddings: EmbeddingIndex,
        label_descriptions: pd.DataFrame,
        label_embeddings: EmbeddingIndex,
    ) -> dg.Output:
        space = LabelSpace.build(seed_labels, text_embeddings, ds.multilabel, label_descriptions, label_embeddings)
        seeds = pd.DataFrame({"label": space.labels, "seeds": [len(space.seed_rows[lab]) for lab in space.labels]})
        return dg.Output(
            space,
            metadata={
                "labels": len(space),
                "seeds": len(space.seed_ids),
                "model": space.model,
                "seeds_per_label_min": int(seeds["seeds"].min()) if len(seeds) else 0,
            },
        )

    return label_space


def pilot_validation_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    key = dg.AssetKey([ds.name, "pilot_validation"])
    check = dg.AssetCheckSpec(
        "pilot_accuracy", asset=key, description=f"The expert's pilot accuracy is at least {ds.pilot_min_accuracy}."
    )

    @dataset_asset(
        ds,
        "pilot_validation",
        {"duckdb", "pandas"},
        "The pipeline's first gate: the expert answers yes/no on seed examples paired with their "
        "true label and a confusable wrong one, asked as RAC asks (the label's seeds nearest to the text); "
        "accuracy, precision/recall of yes, and the calibrated yes/no thresholds (the dataset's, and per "
        "label where the pilot has enough answers) used by later stages.",
        check_specs=[check],
    )
    def pilot_validation(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        mlflow: MLflowResource,
        seed_labels: pd.DataFrame,
        label_space: LabelSpace,
    ):
        from labelflow.pilot import pilot_pairs, run_pilot

        space = label_space
        questions, truth = pilot_pairs(
            seed_labels,
            space.centroid_map(),
            ds.pilot_size,
            seed=ds.seed,
            multilabel=ds.multilabel,
            descriptions=space.descriptions,
            seed_vectors=space.seed_X,  # the seeds shown are the label's nearest to the text, as in RAC
        )
        budget = expert.run_budget(context.run.run_id, ds.name, ds.llm_budget_calls)
        exp = expert.get(budget=budget)
        context.log.info(f"pilot: {len(questions)} yes/no questions to {exp.name}")
        r = run_pilot(exp, questions, truth, min_accuracy=ds.pilot_min_accuracy, seed=ds.seed)
        summary = {k: getattr(r, k) for k in PILOT_SUMMARY}
        meta = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()}
        meta["confusions"] = md_table(r.confusions, 30)
        # RAC, R.E.D. and the inbox use a label's own threshold where the pilot had enough answers for it
        meta["labels_with_own_threshold"] = len(r.label_thresholds)
        meta["label_thresholds"] = dg.MetadataValue.json({k: round(v, 3) for k, v in sorted(r.label_thresholds.items())})
        meta.update(usage_metadata(exp.usage))
        meta.update(budget_metadata(budget))
        meta["unanswered"] = int(r.unanswered)  # past the run's LLM budget: no answer, not a wrong one
        meta["mlflow_run_id"] = mlflow.tracker().log_asset(
            ds.name,
            "pilot_validation",
            dagster_run_id=context.run.run_id,
            tags={"expert": exp.name},
            metrics={**summary, **usage_metadata(exp.usage)},
            tables={"pilot_confusions.csv": r.confusions},
        )
        # the answers (asked label, truth, outcome, margin) are the evidence that calibrates LLM label confidence
        answers = r.answers[["asked_label", "truth", "outcome", "score"]].to_json(orient="records") if len(r.answers) else "[]"
        table = pd.DataFrame([summary]).assign(answers=answers, label_thresholds=json.dumps(r.label_thresholds))
        yield dg.Output(table, metadata=rounded(meta))
        check_meta = {"gate_accuracy": float(r.gate_accuracy), "min_accuracy": ds.pilot_min_accuracy}
        yield dg.AssetCheckResult(
            check_name="pilot_accuracy",
            passed=bool(r.passed),
            severity=dg.AssetCheckSeverity.WARN,
            metadata=rounded({**check_meta, "confusions": md_table(r.confusions, 30)}),
        )

    return pilot_validation


def weak_label_matrix_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "weak_label_matrix",
        {"duckdb", "pandas"},
        "Labelling-function votes on the pool in long format (id, lf, label): the dataset's lfs.yaml "
        "(as validated at ingestion) "
        "plus built-in embedding LFs (seed centroid, k nearest seeds, label description). The LF "
        "analysis (coverage, overlaps, conflicts, accuracy on the seeds) is in the metadata and MLflow.",
    )
    def weak_label_matrix(
        context: dg.AssetExecutionContext,
        mlflow: MLflowResource,
        compute: ComputeResource,
        seed_labels: pd.DataFrame,
        text_pool: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        label_space: LabelSpace,
        text_embeddings: EmbeddingIndex,
        lf_definitions: pd.DataFrame,
    ) -> dg.Output:
        from labelflow import weak
        from labelflow.compute import apply_lfs_sharded

        space = label_space
        lf_inputs = (lf_definitions, space.labels, space.seed_X, space.seed_sets, space.description_X)
        lfs = weak.standard_lfs(*lf_inputs)
        names = [lf.name for lf in lfs]
        # compute: ray runs the LFs over shards of the pool on the cluster (same votes as one local call)
        pool_X = text_embeddings.lookup(text_pool["id"])
        # a conversation dataset: each text's previous message ("" for none) for the LFs that read it
        contexts = text_pool["context"] if "context" in text_pool.columns else None
        seed_contexts = seed_labels["context"] if "context" in seed_labels.columns else None
        votes, errors = apply_lfs_sharded(
            compute.get(), *lf_inputs, text_pool["id"], text_pool["text"], pool_X, contexts=contexts
        )
        for _, e in errors.iterrows():
            context.log.warning(f"labelling function {e['lf']} failed on text {e['id']}: {e['error']} (excluded from this run)")
        seed_votes, _ = weak.apply_lfs(
            lfs, seed_labels["id"], seed_labels["text"], space.seed_X, labels=space.labels, contexts=seed_contexts
        )
        truth = _hidden_truth(hidden_pool_labels)
        table = weak.lf_report(
            votes, seed_votes, names, len(text_pool), seed_labels.set_index("id")["label"], truth, ds.multilabel
        )
        coverage = float(votes["id"].nunique() / max(len(text_pool), 1))
        run_id = mlflow.tracker().log_asset(
            ds.name,
            "weak_label_matrix",
            dagster_run_id=context.run.run_id,
            metrics={"lfs": len(names), "votes": len(votes), "lf_errors": len(errors), "pool_coverage": coverage},
            tables={"lf_analysis.csv": table},
        )
        meta = {"dagster/row_count": len(votes), "lfs": len(names), "lf_errors": len(errors)}
        meta.update(lf_analysis=md_table(table, 100), mlflow_run_id=run_id)
        meta["note"] = "seeds_* accuracy of the embedding LFs is optimistic: they are built from the seeds"
        return dg.Output(votes, metadata=meta)

    return weak_label_matrix


def weak_labels_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "weak_labels",
        {"duckdb", "pandas"},
        f"One weak label per pool text from the label model ({ds.label_model}; majority vote "
        "reported beside it): label, confidence, number of votes, conflict flag.",
    )
    def weak_labels(
        context: dg.AssetExecutionContext,
        text_pool: pd.DataFrame,
        weak_label_matrix: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        label_space: LabelSpace,
    ) -> dg.Output:
        from labelflow.routing import compare_label_models

        ids = text_pool["id"].astype(str).tolist()
        names = (
            ["multilabel_vote"]
            if ds.multilabel
            else sorted({"majority_vote", ds.label_model}, key=lambda n: n != "majority_vote")
        )
        results, compare = compare_label_models(
            weak_label_matrix, ids, label_space.labels, names, ds.multilabel, _hidden_truth(hidden_pool_labels)
        )
        chosen = results[names[-1]]
        return dg.Output(
            chosen, metadata={"dagster/row_count": len(chosen), "label_model": names[-1], "label_models": md_table(compare)}
        )

    return weak_labels


def llm_queue_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "llm_queue",
        {"duckdb", "pandas"},
        "Routing of weak labels: kept (weak_confident), queued for the LLM (ambiguous, disputed, "
        "uncovered; ordered by priority and capped by the budget) or left to the model (rest).",
    )
    def llm_queue(
        context: dg.AssetExecutionContext, text_pool: pd.DataFrame, weak_labels: pd.DataFrame, hidden_pool_labels: pd.DataFrame
    ) -> dg.Output:
        from labelflow.routing import bucket_report, route

        routed = route(weak_labels, ds.routing, budget=ds.llm_budget_calls)
        # the previous message travels with the text to the LLM questions (a conversation dataset)
        routed = routed.merge(text_pool[[c for c in ("id", "text", "context") if c in text_pool.columns]], on="id", how="left")
        truth = _hidden_truth(hidden_pool_labels)
        report = bucket_report(routed, routed["id"].map(truth) if truth is not None else None)
        n_queued = int(routed["queued"].sum())
        context.log.info(f"routing: {routed['bucket'].value_counts().to_dict()}; {n_queued} queued for the LLM")
        return dg.Output(
            routed,
            metadata={
                "dagster/row_count": len(routed),
                "queued": n_queued,
                "kept_weak_confident": int((routed["bucket"] == "weak_confident").sum()),
                "buckets": md_table(report),
            },
        )

    return llm_queue


def _retriever_metadata(choice: str, cv: pd.DataFrame) -> dict:
    """The retriever RAC used (chosen by cross-validation on the seeds) as asset metadata."""
    col = [c for c in cv.columns if c.startswith("cv recall@")]
    chosen = cv.loc[cv["retriever"] == choice, col[0]] if col and len(cv) else pd.Series(dtype=float)
    return {
        "retriever": choice,
        # -1: the seeds were too few for the cross-validation (the default retriever was used)
        "retriever_cv_recall": float(chosen.iloc[0]) if len(chosen) else -1.0,
        "retriever_cv_k": int(col[0].removeprefix("cv recall@")) if col else -1,
        "retriever_cv": md_table(cv),
    }


def rac_labels_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "rac_labels",
        {"duckdb", "pandas", "mlflow"},
        f"RAC over the LLM queue: labels ranked by the retriever chosen by cross-validation on the seeds "
        "(label descriptions, seeds, a seed-trained classifier; the choice and its CV recall in the metadata), "
        f"one yes/no question per candidate in rank order, first accept wins; abstain when none of the top {ds.rac_k} "
        "is accepted. Coverage/precision over k in the metadata and MLflow.",
        deps=[dg.AssetKey([ds.name, "llm_plan"])],  # the plan of what RAC and R.E.D. will cost is written first
    )
    def rac_labels(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        mlflow: MLflowResource,
        llm_queue: pd.DataFrame,
        pilot_validation: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        label_space: LabelSpace,
        text_embeddings: EmbeddingIndex,
    ) -> dg.Output:
        from labelflow.rac import coverage_figure, coverage_over_k, label_queue, space_retriever

        queue = llm_queue[llm_queue["queued"].astype(bool)].reset_index(drop=True)
        budget = expert.run_budget(context.run.run_id, ds.name, ds.llm_budget_calls)
        exp = expert.get(pilot=pilot_validation, budget=budget)
        # the retriever's signals are chosen on the seeds as `labelflow bench rac` chooses them
        retriever, choice, cv = space_retriever(label_space)
        retr = _retriever_metadata(choice, cv)
        context.log.info(f"RAC: {len(queue)} queued texts, k={ds.rac_k}, expert {exp.name}, retriever {choice}")
        res, rac = label_queue(exp, queue, text_embeddings.lookup(queue["id"]), label_space, ds.rac_k, retriever=retriever)
        truth = _hidden_truth(hidden_pool_labels)
        over_k = coverage_over_k(res, rac.questions_, ds.rac_k or len(label_space), truth, label_space.labels, ds.multilabel)
        fig = coverage_figure(over_k)
        last = over_k.iloc[-1].to_dict() if len(over_k) else {}
        run_id = mlflow.tracker().log_asset(
            ds.name,
            "rac_labels",
            dagster_run_id=context.run.run_id,
            tags={"expert": exp.name},
            params={"k": ds.rac_k, "queued": len(queue), "expert": exp.name, "retriever": choice},
            metrics={
                **{f"rac_{k}": v for k, v in last.items() if k != "k"},
                **{f"llm_{k}": v for k, v in usage_metadata(exp.usage).items()},
                "retriever_cv_recall": retr["retriever_cv_recall"],
            },
            tables={"rac_over_k.csv": over_k, "rac_retriever_cv.csv": cv},
            figures={"rac_coverage_precision.png": fig},
        )
        meta = {
            "dagster/row_count": len(res),
            "labelled": int((res["label"] != "").sum()),
            "coverage": float((res["label"] != "").mean()) if len(res) else 0.0,
            "expert": exp.name,
            **retr,
            "over_k": md_table(over_k),
            "coverage_precision_plot": md_figure(fig),
            "mlflow_run_id": run_id,
            "unanswered": int((res["status"] == "unanswered").sum()) if len(res) else 0,
        }
        return dg.Output(res, metadata=rounded({**meta, **usage_metadata(exp.usage), **budget_metadata(budget)}))

    return rac_labels


def red_labels_asset(ds: DatasetConfig) -> dg.AssetsDefinition:
    @dataset_asset(
        ds,
        "red_labels",
        {"duckdb", "pandas", "mlflow"},
        "R.E.D. over the pool: label subsets of mutually dissimilar labels, a classifier per subset with "
        "a noise class, the most uncertain predictions validated by the LLM with dynamic evidence, "
        "retrained each round until saturation. Per-round figures in MLflow.",
    )
    def red_labels(
        context: dg.AssetExecutionContext,
        expert: ExpertResource,
        mlflow: MLflowResource,
        text_pool: pd.DataFrame,
        pilot_validation: pd.DataFrame,
        rac_labels: pd.DataFrame,
        hidden_pool_labels: pd.DataFrame,
        label_space: LabelSpace,
        text_embeddings: EmbeddingIndex,
    ) -> dg.Output:
        from labelflow.red import REDLabeler, rounds_figure

        space = label_space
        # texts RAC already labelled are not asked again
        done = set(rac_labels.loc[rac_labels["label"] != "", "id"])
        pool = text_pool[~text_pool["id"].isin(done)].reset_index(drop=True)
        # the run's one LLM budget; red_budget_calls is a cap for this stage inside it
        budget = expert.run_budget(context.run.run_id, ds.name, ds.llm_budget_calls)
        exp = expert.get(pilot=pilot_validation, budget=budget, budget_calls=ds.red_budget_calls)
        red = REDLabeler(exp, top_k_uncertain=ds.red_top_k, max_rounds=ds.red_max_rounds, seed=ds.seed)
        red.fit(space.seed_X, space.seed_labels, label_vectors=space.centroids, seed_texts=space.seed_texts)
        context.log.info(f"R.E.D.: {len(pool)} pool texts, {len(space.labels)} labels, expert {exp.name}")
        contexts = pool["context"].tolist() if "context" in pool.columns else None
        result = red.run(
            pool["id"].tolist(),
            pool["text"].tolist(),
            text_embeddings.lookup(pool["id"]),
            space.descriptions,
            pool_contexts=contexts,
        )
        out = result.labels.merge(pool[["id", "text"]], on="id", how="left")
        truth = _hidden_truth(hidden_pool_labels)
        meta = {
            "dagster/row_count": len(out),
            "stop_reason": result.stop_reason,
            "rounds": len(result.rounds),
            "expert": exp.name,
            "rounds_table": md_table(result.rounds),
        }
        if truth is not None and len(out):
            meta["accepted_accuracy"] = float((out["label"] == out["id"].map(truth)).mean())
        fig = rounds_figure(result.rounds) if len(result.rounds) else None
        meta["mlflow_run_id"] = mlflow.tracker().log_asset(
            ds.name,
            "red_labels",
            dagster_run_id=context.run.run_id,
            tags={"expert": exp.name},
            params={"stop_reason": result.stop_reason, "expert": exp.name},
            metrics=usage_metadata(result.usage),
            step_metrics=[
                (r["round"], {k: r[k] for k in ("uncertain", "asked", "accepted", "rejected", "calls")})
                for _, r in result.rounds.iterrows()
            ],
            figures={"red_rounds.png": fig},
        )
        if fig is not None:
            meta["rounds_plot"] = md_figure(fig)
        meta.update(usage_metadata(result.usage))
        meta.update(budget_metadata(budget))
        return dg.Output(out, metadata=rounded(meta))

    return red_labels


# the dataset's labelling assets in graph order (red_labels only for multi-class datasets)
LABELLING_ASSETS = (
    label_descriptions_asset,
    label_embeddings_asset,
    label_space_asset,
    pilot_validation_asset,
    weak_label_matrix_asset,
    weak_labels_asset,
    llm_queue_asset,
    rac_labels_asset,
)


def labelling_assets(ds: DatasetConfig) -> list:
    """Every labelling asset of one dataset."""
    builders = list(LABELLING_ASSETS) + ([] if ds.multilabel else [red_labels_asset])
    return [build(ds) for build in builders]
