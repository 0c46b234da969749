"""``labelflow bench --method rac``: retrieval recall, RAC vs list-prompt baselines, and the SVM
retrained on RAC labels.

    labelflow bench --method rac --dataset ../shared/datasets/banking77 --expert simulated --p 0.9
    labelflow bench --method rac --dataset ../shared/datasets/banking77 --expert local --sample 200

Prints (and writes under ``--out``): recall@{1,3,5,10} of each retriever signal (descriptions, seeds,
the seed-trained classifier) and of their fusions on the test texts (multi-label datasets: only this,
a hit = any gold label among the top k); a
table with (a) one prompt listing every label, (b) one top-k few-shot prompt, (c) RAC without
truncation, (d) RAC with k in ``--rac-ks``: precision, coverage, micro/macro-F1 (abstain = wrong),
calls and prompt tokens per text and per labelled text, seconds per labelled text; and, with the
SimulatedExpert, the EmbeddingSVM retrained on the seeds + RAC labels of the pool next to the
seed-only SVM. With ``--refine-descriptions`` an LLM (``--describe-with``) first rewrites each label's
description once (:func:`labelflow.descriptions.refine_descriptions`) and the rows that use descriptions
are also reported with the descriptions before refinement.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from labelflow.bench.common import bench_expert, emit, load_bench, pool_truth_aligned
from labelflow.labelspace import LabelSpace
from labelflow.metrics import classification_metrics
from labelflow.rac import RAC, LabelRetriever, coverage_over_k, select_retriever, truncate
from labelflow.rac_baselines import naive_all_labels, topk_fewshot
from labelflow.expert import make_expert
from labelflow.simulated import SimulatedConfig
from labelflow.training import EmbeddingSVM

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    g = p.add_argument_group("rac")
    g.add_argument("--rac-ks", default="1,3,5,10", help="RAC truncations to report (comma-separated)")
    g.add_argument(
        "--rac-max-k",
        type=int,
        default=None,
        help="deepest RAC run (default: no truncation with the simulated expert, 10 with an LLM)",
    )
    g.add_argument("--fewshot-k", type=int, default=5, help="candidates in the top-k few-shot baseline")
    g.add_argument("--n-examples", type=int, default=3, help="nearest seed examples shown per label")
    g.add_argument("--desc-weight", type=float, default=1.0)
    g.add_argument("--seed-weight", type=float, default=1.0)
    g.add_argument("--seed-agg", default="mean_top", choices=["max", "mean_top"])
    g.add_argument(
        "--retriever",
        default="cv",
        choices=["cv", "fixed"],
        help="cv: choose the retriever's signals by 3-fold cross-validation on the seeds (recall@5); "
        "fixed: the weights and fusion below",
    )
    g.add_argument(
        "--clf-weight",
        type=float,
        default=1.0,
        help="weight of the seed-trained classifier's class scores in the retriever (0 = off)",
    )
    g.add_argument(
        "--fusion",
        default="rank",
        choices=["rank", "score"],
        help="retriever fusion: reciprocal rank fusion or the weighted mean of raw scores",
    )
    g.add_argument("--rrf-k", type=float, default=60.0, help="reciprocal rank fusion constant")
    g.add_argument(
        "--recall-only", action="store_true", help="report the retriever's recall only (multi-label datasets always do)"
    )
    g.add_argument(
        "--pool-sample",
        type=int,
        default=3000,
        help="pool texts RAC labels (SimulatedExpert) before retraining the SVM; 0 = skip",
    )
    g.add_argument("--pool-ks", default="3,10", help="RAC truncations used to label the pool for retraining")
    g.add_argument("--skip-baselines", action="store_true", help="run RAC only")
    g.add_argument(
        "--calibrate", type=int, default=0, help="with an LLM: a pilot of N questions on the seeds sets its thresholds first"
    )
    g.add_argument(
        "--describe",
        action="store_true",
        help="with an LLM expert: have it write the missing label descriptions first (else label names)",
    )
    g.add_argument(
        "--refine-descriptions",
        action="store_true",
        help="have an LLM rewrite each label's description once, short and discriminative, from its seeds and its "
        "nearest confusable labels (labelflow.descriptions.refine_descriptions); written to <out>/rac_descriptions_<dataset>.csv",
    )
    g.add_argument(
        "--describe-with",
        default="expert",
        choices=["expert", "local", "config"],
        help="the LLM that writes (--describe) or refines descriptions: the --expert, the local model, or "
        "labelflow.yaml's llm (so that RAC itself can use the simulated expert); answers cached under --out",
    )
    g.add_argument(
        "--describe-budget",
        type=int,
        default=None,
        help="LLM calls for writing/refining descriptions (0 = cached answers only; labels past it keep their description)",
    )


def _label_text(lab: str) -> str:
    return lab.replace("_", " ").replace("-", " ").strip()


def _embedding_text(lab: str, description: str) -> str:
    """The text whose embedding represents a label: the label name alone where the description is the
    name, else 'label name: description' as the product's label_embeddings asset embeds it."""
    from labelflow.labelspace import name_description

    return description if description == _label_text(lab) else f"{name_description(lab)}: {description}"


@contextlib.contextmanager
def _describer(args, expert=None):
    """The LLM that writes (``--describe``) or refines (``--refine-descriptions``) the descriptions, or
    None (label names, or labels.csv's): ``--describe-with`` names it; ``expert`` (the RAC expert) is
    reused when it is that LLM and no ``--describe-budget`` is set; another one is made here and closed."""
    from labelflow.config import ConfigError
    from labelflow.llm.budget import Budget

    which = args.expert if args.describe_with == "expert" else args.describe_with
    if not (args.describe or args.refine_descriptions) or which == "simulated":
        if args.refine_descriptions:
            raise ConfigError(
                "--refine-descriptions needs an LLM to write them: --describe-with local|config or --expert local|config"
            )
        yield None
        return
    if expert is not None and args.describe_with == "expert" and args.describe_budget is None:
        yield expert
        return
    budget = Budget(calls=args.describe_budget, name="describe_budget") if args.describe_budget is not None else None
    llm_args = SimpleNamespace(**{**vars(args), "expert": which})
    made = bench_expert(llm_args, {}, None, cache_path=Path(args.out) / "rac_llm_cache.duckdb", budget=budget)
    try:
        yield made
    finally:
        made.close()


def _descriptions(data, args, describer=None, multilabel: bool = False) -> tuple[dict, str, dict | None]:
    """Label descriptions (label -> text), where they come from, and the descriptions before refinement
    (None without it): labels.csv's where given, else written by ``describer`` (``--describe``), else
    the label names as text; then, with ``--refine-descriptions``, refined once by ``describer``
    (:func:`_refine`)."""
    from labelflow.descriptions import SOURCE_NAME, SOURCE_USER, describe_labels

    given = {
        lab: d
        for lab, d in zip(data.ds.descriptions["label"], data.ds.descriptions["description"])
        if isinstance(d, str) and d.strip()
    }  # an empty description is no description
    missing = [lab for lab in data.ds.labels if not given.get(lab)]
    if not missing:
        source = "labels.csv"
        df = pd.DataFrame({"label": data.ds.labels, "description": [given[lab] for lab in data.ds.labels]})
        df = df.assign(source=SOURCE_USER, model="")
    elif describer is not None and args.describe:
        df = describe_labels(data.ds.labels, data.ds.seeds, data.ds.descriptions, describer)
        source = f"written by {describer.name} (labelflow.descriptions)"
    else:
        df = pd.DataFrame({"label": data.ds.labels})
        df["description"] = [given.get(lab) or _label_text(lab) for lab in data.ds.labels]
        df["source"] = [SOURCE_USER if given.get(lab) else SOURCE_NAME for lab in data.ds.labels]
        df["model"] = ""
        source = (
            "label names as text (labels.csv has no descriptions)"
            if len(missing) == len(data.ds.labels)
            else f"labels.csv, label names for {len(missing)} labels"
        )
    base = dict(zip(df["label"], df["description"]))
    if args.refine_descriptions and describer is not None:
        return (*_refine(data, args, describer, df, source, multilabel), base)
    return base, source, None


def _refine(data, args, describer, base: pd.DataFrame, source: str, multilabel: bool) -> tuple[dict, str]:
    """``base`` refined once by ``describer`` with the seeds and the nearest confusable labels by seed
    centroid (:func:`labelflow.descriptions.refine_descriptions`); prints what it cost and writes the
    descriptions to ``<out>/rac_descriptions_<dataset>.csv``."""
    from labelflow.bench.common import _progress
    from labelflow.descriptions import SOURCE_REFINED, refine_descriptions

    centroids = LabelSpace.build(data.ds.seeds, data.seeds_X, multilabel).centroid_map()
    before = describer.usage
    t0 = time.perf_counter()
    df = refine_descriptions(
        base, data.ds.seeds, describer, centroids, multilabel=multilabel, progress=_progress("refining descriptions", "labels")
    )
    secs = time.perf_counter() - t0
    used = describer.usage
    n = int((df["source"] == SOURCE_REFINED).sum())
    path = Path(args.out) / f"rac_descriptions_{data.ds.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    past = df.attrs.get("past_budget", [])
    print(
        f"descriptions refined by {describer.name}: {n}/{len(df)} labels; {used.calls - before.calls} LLM calls, "
        f"{used.cache_hits - before.cache_hits} from the cache, {secs:.0f} s"
        + (f"; {len(past)} labels past --describe-budget keep their description" if past else "")
        + f"; written to {path}",
        flush=True,
    )
    return dict(zip(df["label"], df["description"])), f"refined by {describer.name} for {n}/{len(df)} labels (from {source})"


def _row(name, truth, pred_df, labels, seconds, all_labels_tokens=None, note=""):
    row = _row_values(name, truth, pred_df, labels, seconds, all_labels_tokens, note)
    log.info("result: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return row


def _row_values(name, truth, pred_df, labels, seconds, all_labels_tokens=None, note=""):
    m = classification_metrics(list(truth), list(pred_df["label"]), labels)
    n = len(pred_df)
    nl = int((pred_df["label"] != "").sum())
    calls = float(pred_df["calls"].sum())
    toks = float(pred_df["prompt_tokens"].sum())
    qs = float(pred_df["questions"].sum()) if "questions" in pred_df else calls
    row = {
        "method": name,
        "n": n,
        "precision": m["precision"],
        "coverage": m["coverage"],
        "micro_f1": m["micro_f1"],
        "macro_f1": m["macro_f1"],
        "questions/text": qs / n,
        "calls/text": calls / n,
        "tokens/text": toks / n,
        "calls/labelled": calls / nl if nl else float("nan"),
        "tokens/labelled": toks / nl if nl else float("nan"),
        "tokens/labelled vs (a)": (toks / nl) / all_labels_tokens if nl and all_labels_tokens else float("nan"),
        "s/labelled": seconds / nl if nl else float("nan"),
    }
    if note:
        row["note"] = note
    return row


def _make_expert(args, data, truth: dict, label_vectors: dict):
    """The ``--expert`` (:func:`labelflow.bench.common.bench_expert`); LLM answers are cached under ``--out``."""
    return bench_expert(args, truth, label_vectors, cache_path=Path(args.out) / "rac_llm_cache.duckdb")


def run(args) -> list[pd.DataFrame]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from labelflow.bench.common import infer_task

    multilabel = (args.task or infer_task(Path(args.dataset))) == "multilabel"
    recall_only = args.recall_only or multilabel
    # the pool is only needed to retrain the SVM on RAC labels: leave it unembedded otherwise
    if recall_only:
        data = _recall_data(args, multilabel)
        with _describer(args) as describer:
            descriptions, desc_source, before = _descriptions(data, args, describer, multilabel)
        return [_recall_table(args, data, descriptions, desc_source, multilabel, before)[0]]
    data = load_bench(
        args.dataset,
        args.seed_per_class or None,
        seed=0,
        max_gold=args.sample,
        max_pool=0 if (not args.pool_sample or args.expert != "simulated") else None,
        embedding_model=getattr(args, "embedding_model", "minilm"),
        label_conflicts=getattr(args, "label_conflicts", "error"),
    )
    ds = data.ds
    space = LabelSpace.build(ds.seeds, data.seeds_X)
    seed_texts, seed_vecs, centroids = space.seed_texts_by_label(), space.seed_vectors_by_label(), space.centroid_map()
    truth_map = dict(zip(ds.gold["id"], ds.gold["label"]))
    expert = _make_expert(args, data, truth_map, centroids)
    try:
        return _run(args, data, expert, seed_texts, seed_vecs, centroids)
    finally:
        expert.close()  # stops the local server it started


def _run(args, data, expert, seed_texts, seed_vecs, centroids) -> list[pd.DataFrame]:
    ds = data.ds
    out = Path(args.out)
    with _describer(args, expert) as describer:
        descriptions, desc_source, before = _descriptions(data, args, describer)
    rec_table, retriever, label_X, retr_kw = _recall_table(args, data, descriptions, desc_source, False, before)
    truth = list(ds.gold["label"])
    if args.calibrate and args.expert != "simulated":  # labelflow.pilot.calibrate_on_seeds: thresholds per dataset/label
        from labelflow.pilot import calibrate_on_seeds

        cal = calibrate_on_seeds(expert, ds.seeds, data.seeds_X, args.calibrate, descriptions, n_examples=args.n_examples)
        print(f"calibrated on {cal.n} seed questions: threshold {cal.threshold:.2f}, {len(cal.label_thresholds)} per label")
    tables = [rec_table]

    rows = _compare(args, data, expert, retriever, descriptions, seed_texts, seed_vecs, truth)
    tables.append(pd.DataFrame(rows))
    simulated = args.expert == "simulated"
    note = (
        f"Expert: {expert.name}. Descriptions: {desc_source}. Abstain counts as wrong in F1. "
        "'questions' = yes/no questions (or list prompts) asked; 'calls' = requests sent (cache hits excluded). "
    )
    if simulated:
        note += (
            "SIMULATED: prompt tokens are estimated as ceil(characters / 4) of the prompt text that would be "
            "sent; the list-prompt rows (a), (b) assume the expert picks the gold label with probability p "
            "whenever it is listed, however long the list (an assumption, not a measurement; the RAC paper "
            "measured F1 4.0 for (a) on BANKING77 with a real LLM). "
        )
    else:
        note += "Prompt tokens as reported by the model server. "
    note += getattr(args, "_rac_note", "")
    emit(tables[1], out, f"rac_compare_{ds.name}_{args.expert}", f"RAC vs list prompts on {ds.name} ({expert.name})", note)

    if simulated and args.pool_sample:
        tables.append(_retrain(args, data, descriptions, label_X, seed_texts, seed_vecs, centroids, retr_kw))
    return tables


def _recall_data(args, multilabel: bool) -> SimpleNamespace:
    """Seeds (K per label from train) and test texts for the recall-only report, embedded through the
    benchmark's vector cache. Read like ``--method rapt`` reads its tables: copies of a text within one
    table are merged into one row with the union of their labels (GoEmotions and DailyDialog repeat
    texts with different labels, which :func:`labelflow.data.load_dataset` refuses); in a multi-class
    train table such a text cannot be a seed and is left out; a merged test text counts as a hit when
    any of its labels is retrieved. The numbers merged and left out are printed."""
    from labelflow.bench.common import DEFAULT_CACHE, _progress
    from labelflow.bench.rapt import load_split
    from labelflow.data import LABEL_SEP, benchmark_split, find_table, read_table
    from labelflow.embedding import Embedder, VectorStore

    folder = Path(args.dataset)
    policy = getattr(args, "label_conflicts", "error")
    train, m_tr = load_split(folder, "train", label_conflicts=policy)
    test, m_te = load_split(folder, "test", label_conflicts=policy)
    dropped = 0
    if not multilabel:
        two = train["label"].str.contains(LABEL_SEP, regex=False)
        dropped = int(two.sum())
        train = train[~two].reset_index(drop=True)
    seeds, _ = benchmark_split(train, args.seed_per_class or 10, 0, multilabel)
    if args.sample and len(test) > args.sample:
        test = test.sample(n=args.sample, random_state=0).reset_index(drop=True)
    labels = sorted({lab for v in train["label"] for lab in v.split(LABEL_SEP)})
    desc_path = find_table(folder, "labels")
    desc = read_table(desc_path) if desc_path is not None else pd.DataFrame(columns=["label"])
    desc = pd.DataFrame(
        {"label": desc["label"].astype(str), "description": desc["description"].astype(str) if "description" in desc else ""}
    )
    print(
        f"{folder.name}: {len(seeds)} seeds ({args.seed_per_class or 10} per label), {len(test)} test texts, "
        f"{len(labels)} labels; repeated texts merged (label union): train {m_tr}, test {m_te}"
        + (f"; {dropped} train texts with two labels left out of the seed candidates" if dropped else ""),
        flush=True,
    )
    embedder = Embedder(getattr(args, "embedding_model", "minilm"))
    store = VectorStore(DEFAULT_CACHE / folder.resolve().name)
    X, _ = store.embed_cached(list(seeds["text"]) + list(test["text"]), embedder, progress=_progress("embedding"))
    ds = SimpleNamespace(name=folder.resolve().name, labels=labels, seeds=seeds, gold=test, descriptions=desc)
    return SimpleNamespace(ds=ds, embedder=embedder, seeds_X=X[: len(seeds)], gold_X=X[len(seeds) :])


def _recall_table(args, data, descriptions, desc_source, multilabel, before=None):
    """recall@{1,3,5,10} on the test texts of each retriever signal alone and of the fusions; returns
    (table, the retriever RAC uses, label description vectors, its keyword arguments). ``before``: the
    descriptions before refinement, whose rows are reported next to the refined ones
    (:func:`_before_refinement`)."""
    from labelflow.data import label_lists

    ds = data.ds
    labels = ds.labels
    t0 = time.perf_counter()
    label_X = data.embedder.encode([_embedding_text(lab, descriptions[lab]) for lab in labels])
    seed_y = list(ds.seeds["label"]) if not multilabel else label_lists(ds.seeds["label"], True)
    truth = label_lists(ds.gold["label"], True)  # a list per text (a merged repeat may carry several)
    retr_kw, used, cv_note = _used_retriever(args, ds.name, labels, label_X, data.seeds_X, seed_y)
    clf = (
        LabelRetriever(desc_weight=0.0, seed_weight=0.0, clf_weight=1.0).fit(labels, None, data.seeds_X, seed_y).classifier_
    )  # trained once, shared by the rows below
    retriever = LabelRetriever(**retr_kw).fit(
        labels, label_X, data.seeds_X, seed_y, classifier=clf if retr_kw.get("clf_weight", 0) > 0 else None
    )
    rows = _signal_retrievers(args, labels, label_X, data.seeds_X, seed_y, clf) + [(used + " [used]", retriever)]
    if before is not None:
        rows += _before_refinement(args, data, descriptions, before, rows, truth, (labels, seed_y, clf))
    table = _recall_rows(rows, data.gold_X, truth)
    n_seeds = len(ds.seeds)
    emit(
        table,
        args.out,
        f"rac_recall_{ds.name}",
        f"RAC label retrieval on {ds.name} test (n={len(truth)})",
        f"Descriptions: {desc_source}; embeddings: {data.embedder.name}; {args.seed_per_class} seeds per class "
        f"({n_seeds} seeds, {len(labels)} labels){'; multi-label: a hit = any gold label in the top k' if multilabel else ''}; "
        f"{time.perf_counter() - t0:.1f} s for all rows.{cv_note}",
    )
    return table, retriever, label_X, retr_kw


def _recall_rows(retrievers, X, truth, ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """One row per (name, retriever): recall@k on the texts ``X`` with gold label lists ``truth``."""
    rows = []
    for name, r in retrievers:
        rec = r.recall_at_k(X, truth, list(ks))
        rows.append({"retriever": name, **{f"recall@{k}": rec[k] for k in ks}})
    return pd.DataFrame(rows)


def _before_refinement(args, data, refined, before, rows, truth, fit_args) -> list[tuple[str, LabelRetriever]]:
    """The rows that use descriptions, refitted with the descriptions before refinement (named
    '... [before refinement]'), to report next to the refined ones. When only some labels were refined
    (an LLM stopped by ``--describe-budget``), also emits the recall of every row on the test texts
    whose gold label has a refined description."""
    labels, seed_y, clf = fit_args
    base_X = data.embedder.encode([_embedding_text(lab, before[lab]) for lab in labels])
    out = [
        (f"{name} [before refinement]", r)
        for name, r in _signal_retrievers(args, labels, base_X, data.seeds_X, seed_y, clf)
        if r.label_vectors_ is not None
    ]
    changed = {lab for lab in labels if refined[lab] != before[lab]}
    if 0 < len(changed) < len(labels):
        mask = np.array([any(lab in changed for lab in t) for t in truth])
        sub = [t for t, m in zip(truth, mask) if m]
        emit(
            _recall_rows([row for row in rows + out if row[1].label_vectors_ is not None], data.gold_X[mask], sub),
            args.out,
            f"rac_recall_refined_subset_{data.ds.name}",
            f"RAC label retrieval on the {int(mask.sum())} test texts whose gold label was refined ({len(changed)} of {len(labels)} labels)",
            "Rows with a description signal, with the refined descriptions and [before refinement]. The other labels "
            "keep their description before refinement in both.",
        )
    return out


def _used_retriever(args, name, labels, label_X, seeds_X, seed_y) -> tuple[dict, str, str]:
    """The retriever RAC uses: (LabelRetriever keyword arguments, its row name, a note), chosen on the
    seeds alone by K-fold CV (``--retriever cv``, its table emitted) or fixed by the weight flags."""
    if args.retriever == "cv":  # the signals chosen on the seeds alone (K-fold), never on the test texts
        t1 = time.perf_counter()
        chosen, retr_kw, cv_table = select_retriever(
            labels, label_X, seeds_X, seed_y, k=5, folds=3, seed_agg=args.seed_agg, rrf_k=args.rrf_k
        )
        emit(
            cv_table,
            args.out,
            f"rac_recall_cv_{name}",
            f"Retriever chosen on the seeds ({name}, 3-fold CV)",
            f"Each fold's seeds are the queries of a retriever built from the other folds' seeds; chosen: {chosen}; "
            f"{time.perf_counter() - t1:.1f} s.",
        )
        cv_note = " [used] = the choice of the seeds' cross-validation (table above), not of these test figures."
        return retr_kw, f"chosen by 3-fold CV on the seeds: {chosen}", cv_note
    retr_kw = dict(
        desc_weight=args.desc_weight,
        seed_weight=args.seed_weight,
        clf_weight=args.clf_weight,
        fusion=args.fusion,
        rrf_k=args.rrf_k,
        seed_agg=args.seed_agg,
    )
    used = (
        f"{args.fusion} fusion (desc {args.desc_weight:g}, seeds {args.seed_weight:g}, "
        f"classifier {args.clf_weight:g}{f', k={args.rrf_k:g}' if args.fusion == 'rank' else ''})"
    )
    return retr_kw, used, ""


def _signal_rows_spec(args, clf) -> list[tuple[str, dict, bool]]:
    """(row name, LabelRetriever keyword arguments, whether it takes the shared classifier) of each
    signal alone and of the fusions the recall table reports."""
    agg, k = args.seed_agg, args.rrf_k
    rank = dict(fusion="rank", rrf_k=k, seed_agg=agg)
    return [
        ("descriptions only", dict(seed_weight=0.0), False),
        (f"seeds only ({agg})", dict(desc_weight=0.0, seed_agg=agg), False),
        (f"classifier only ({type(clf).__name__} on the seeds)", dict(desc_weight=0.0, seed_weight=0.0, clf_weight=1.0), True),
        ("score fusion: descriptions + seeds (previous default)", dict(seed_agg=agg), False),
        (f"rank fusion (k={k:g}): descriptions + seeds", rank, False),
        (f"rank fusion (k={k:g}): descriptions + seeds + classifier", dict(clf_weight=1.0, **rank), True),
        (f"rank fusion (k={k:g}): seeds + classifier", dict(desc_weight=0.0, clf_weight=1.0, **rank), True),
    ]


def _signal_retrievers(args, labels, label_X, seeds_X, seed_y, clf) -> list[tuple[str, LabelRetriever]]:
    """The fitted retrievers of :func:`_signal_rows_spec`: a retriever gets the description vectors only
    when it weighs descriptions, the seeds only when it weighs seeds, and the shared classifier."""
    out = []
    for name, kw, with_clf in _signal_rows_spec(args, clf):
        r = LabelRetriever(**kw)
        use_desc = r.desc_weight > 0
        use_seeds = r.seed_weight > 0
        out.append(
            (
                name,
                r.fit(
                    labels,
                    label_X if use_desc else None,
                    seeds_X if use_seeds else None,
                    seed_y if use_seeds else None,
                    classifier=clf if with_clf else None,
                ),
            )
        )
    return out


def _compare(args, data, expert, retriever, descriptions, seed_texts, seed_vecs, truth) -> list[dict]:
    ds = data.ds
    labels = ds.labels
    ids, texts, X = list(ds.gold["id"]), list(ds.gold["text"]), data.gold_X
    rows = []
    simulated = args.expert == "simulated"
    ks = [int(k) for k in args.rac_ks.split(",") if k.strip()]
    max_k = args.rac_max_k if args.rac_max_k is not None else (None if simulated else max(ks))

    t0 = time.perf_counter()
    rac = RAC(expert, k=max_k, n_examples=args.n_examples)
    full = rac.label(ids, texts, X, retriever, descriptions, seed_texts, seed_vecs)
    full_s = time.perf_counter() - t0
    full_q = max(int(full["questions"].sum()), 1)
    # coverage / precision for every truncation up to the largest k, derived from this one run: the same
    # function (and table) as the rac_labels asset's
    k_curve = min(max(ks), max_k) if max_k is not None else max(ks)
    over_k = coverage_over_k(full, rac.questions_, k_curve, pd.Series(truth, index=ids), labels)
    emit(
        over_k.astype({"k": str}),
        args.out,
        f"rac_over_k_{ds.name}_{args.expert}",
        f"RAC coverage / precision over k on {ds.name} ({expert.name}), derived from one run",
        "Each row is the result of cutting the deepest run after round k (labelflow.rac.coverage_over_k).",
    )

    all_tok = None
    if not args.skip_baselines:
        t0 = time.perf_counter()
        a = naive_all_labels(expert, ids, texts, labels, descriptions)
        a_s = time.perf_counter() - t0
        all_tok = float(a["prompt_tokens"].mean())
        rows.append(_row("(a) all labels, one prompt", truth, a, labels, a_s, all_tok))
        t0 = time.perf_counter()
        b = topk_fewshot(expert, ids, texts, X, retriever, descriptions, seed_texts, seed_vecs, k=args.fewshot_k, n_examples=2)
        rows.append(_row(f"(b) top-{args.fewshot_k} few-shot, one prompt", truth, b, labels, time.perf_counter() - t0, all_tok))
    name = "(c) RAC, no truncation" if max_k is None else f"(c) RAC, deepest run k={max_k} (no-truncation run skipped)"
    rows.append(_row(name, truth, full, labels, full_s, all_tok))
    derived = []
    for k in ks:
        if max_k is not None and k > max_k:
            continue
        if simulated:  # cheap: run each truncation directly (and time it)
            t0 = time.perf_counter()
            res = RAC(expert, k=k, n_examples=args.n_examples).label(
                ids, texts, X, retriever, descriptions, seed_texts, seed_vecs
            )
            secs = time.perf_counter() - t0
        else:  # an LLM: derive from the deepest run's per-question log (same questions, cut at round k)
            res = truncate(full, rac.questions_, k)
            secs = full_s * int(res["questions"].sum()) / full_q
            derived.append(k)
        rows.append(_row(f"(d) RAC, k={k}", truth, res, labels, secs, all_tok))
    if derived:
        args._rac_note = (
            f"RAC rows k={derived} are derived exactly from the k={max_k} run's per-question log "
            "(same questions in the same order, cut after round k); their seconds are the run's time "
            "prorated by questions asked. "
        )
    return rows


def _retrain(args, data, descriptions, label_X, seed_texts, seed_vecs, centroids, retr_kw) -> pd.DataFrame:
    """Seeds + RAC-labelled pool (SimulatedExpert) -> EmbeddingSVM, scored on the test set."""
    ds = data.ds
    labels = ds.labels
    rng = np.random.default_rng(0)
    n = min(args.pool_sample, len(ds.pool))
    idx = np.sort(rng.choice(len(ds.pool), size=n, replace=False))
    pool = ds.pool.iloc[idx].reset_index(drop=True)
    pool_X = data.pool_X[idx]
    pool_gold = pool_truth_aligned(data).iloc[idx].reset_index(drop=True)
    expert = make_expert(SimulatedConfig(dict(zip(pool["id"], pool_gold)), p=args.p, label_vectors=centroids, seed=0))
    retriever = LabelRetriever(**retr_kw).fit(labels, label_X, data.seeds_X, list(ds.seeds["label"]))
    y_test = list(ds.gold["label"])
    rows = []
    t0 = time.perf_counter()
    base = EmbeddingSVM().fit(data.seeds_X, ds.seeds["label"])
    m = classification_metrics(y_test, base.predict(data.gold_X), labels)
    rows.append(
        {
            "training set": f"seeds only ({len(ds.seeds)})",
            "RAC-labelled": 0,
            "RAC label precision": float("nan"),
            "test accuracy": m["accuracy"],
            "test macro_f1": m["macro_f1"],
            "fit s": time.perf_counter() - t0,
        }
    )
    for k in [int(k) for k in args.pool_ks.split(",") if k.strip()]:
        res = RAC(expert, k=k, n_examples=args.n_examples).label(
            list(pool["id"]), list(pool["text"]), pool_X, retriever, descriptions, seed_texts, seed_vecs
        )
        got = (res["label"] != "").to_numpy()
        prec = float((res["label"][got].to_numpy() == pool_gold[got].to_numpy()).mean()) if got.any() else float("nan")
        t0 = time.perf_counter()
        X_tr = np.vstack([data.seeds_X, pool_X[got]])
        y_tr = list(ds.seeds["label"]) + list(res["label"][got])
        svm = EmbeddingSVM().fit(X_tr, y_tr)
        m = classification_metrics(y_test, svm.predict(data.gold_X), labels)
        rows.append(
            {
                "training set": f"seeds + RAC k={k} on {n} pool texts",
                "RAC-labelled": int(got.sum()),
                "RAC label precision": prec,
                "test accuracy": m["accuracy"],
                "test macro_f1": m["macro_f1"],
                "fit s": time.perf_counter() - t0,
            }
        )
    df = pd.DataFrame(rows)
    emit(
        df,
        args.out,
        f"rac_retrain_{ds.name}",
        f"EmbeddingSVM retrained on RAC labels ({ds.name}, {expert.name})",
        f"Pool: a seeded sample of {n} of {len(ds.pool)} pool texts labelled by RAC with the SimulatedExpert "
        f"(p={args.p:g}); test n={len(y_test)}.",
    )
    return df
