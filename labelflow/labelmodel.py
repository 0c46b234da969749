"""Label models: aggregate labelling-function votes into one label distribution per text. No Dagster here.

The vote matrix is sparse: a :class:`VoteMatrix` holds one triplet (text row, LF column, label index) per
vote; everything else is an abstention (the dense view is an ``n_texts x n_lfs`` int array with
``-1`` = abstain, accepted everywhere too). Nothing builds a dense ``n x m x k`` tensor, so 100k texts x
50 LFs x 1 000 classes fits in memory and time (``labelflow bench --method labelmodel_scale``).

* :class:`MajorityVote` -- votes per label (bincount); ties share the mass uniformly and are flagged.
* :class:`DawidSkene` -- EM over per-LF class-confusion matrices with class priors (Dawid & Skene 1979),
  initialised from the majority vote, Dirichlet-smoothed towards ``prior_accuracy`` so rare classes get
  sensible confusions. To stay sparse with many classes the posterior of a text is kept on the labels
  voted for it plus one "none of the voted labels" bucket (whose likelihood uses each LF's average
  error rate): a class nobody voted for can only be true if every LF on the text is wrong at once.
  Off-diagonal confusions are learnt for the (true class, voted label) pairs that occur; the rest of a
  row's mass is spread evenly.

Both follow scikit-learn conventions: ``fit(L, n_classes)`` returns ``self``; ``predict_proba(L)`` returns
an ``(n, k)`` array (``sparse=True`` gives a CSR matrix, which is what to use with 1 000 classes);
``predict(L)`` returns label indices with ``-1`` (abstain) for texts with no votes. Rows of texts with no
votes are all zero.

Multi-label datasets: an LF still votes one label, read as a positive vote for that label only. Use
:class:`MultiLabelVote`, a per-label binary aggregation: label ``l`` is assigned to a text when the share
of the LFs that voted on the text which voted ``l`` reaches ``min_share`` (confidence = that share).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

ABSTAIN = -1


@dataclass
class VoteMatrix:
    """Sparse LF vote matrix: parallel arrays ``rows`` (text index), ``lfs`` (LF index), ``labels``
    (label index), one entry per vote."""

    rows: np.ndarray
    lfs: np.ndarray
    labels: np.ndarray
    n_texts: int
    n_lfs: int

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.lfs = np.asarray(self.lfs, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.rows) == len(self.lfs) == len(self.labels)):
            raise ValueError("rows, lfs and labels must have the same length")
        if len(self.rows):
            if self.rows.min() < 0 or self.rows.max() >= self.n_texts:
                raise ValueError("a vote's row is outside 0..n_texts-1")
            if self.lfs.min() < 0 or self.lfs.max() >= self.n_lfs:
                raise ValueError("a vote's LF is outside 0..n_lfs-1")
            if self.labels.min() < 0:
                raise ValueError("a vote's label index is negative (abstentions are simply absent)")

    @property
    def nnz(self) -> int:
        return len(self.rows)

    @classmethod
    def from_dense(cls, L: np.ndarray) -> "VoteMatrix":
        L = np.asarray(L)
        if L.ndim != 2:
            raise ValueError(f"a dense vote matrix must be 2-D (n_texts, n_lfs), got shape {L.shape}")
        r, j = np.nonzero(L != ABSTAIN)
        return cls(r, j, L[r, j], L.shape[0], L.shape[1])

    def to_dense(self) -> np.ndarray:
        """``(n_texts, n_lfs)`` with -1 = abstain; with several votes from one LF on one text, the last wins."""
        L = np.full((self.n_texts, self.n_lfs), ABSTAIN, dtype=np.int64)
        L[self.rows, self.lfs] = self.labels
        return L

    def n_votes(self) -> np.ndarray:
        return np.bincount(self.rows, minlength=self.n_texts)

    def counts(self, n_classes: int) -> sp.csr_matrix:
        """``(n_texts, n_classes)`` CSR of vote counts per label."""
        return sp.csr_matrix((np.ones(self.nnz), (self.rows, self.labels)), shape=(self.n_texts, n_classes))

    def n_distinct_labels(self, n_classes: int) -> np.ndarray:
        return np.diff(self.counts(n_classes).indptr)


def as_votes(L) -> VoteMatrix:
    return L if isinstance(L, VoteMatrix) else VoteMatrix.from_dense(L)


def votes_to_matrix(votes: pd.DataFrame, ids: Sequence[str], lf_names: Sequence[str], labels: Sequence[str]) -> VoteMatrix:
    """Long votes (``id, lf, label``) -> :class:`VoteMatrix` with rows in ``ids`` order, columns in
    ``lf_names`` order and label indices into ``labels``. Votes of LFs not in ``lf_names`` are left out
    (to aggregate a subset of LFs); a vote for an unknown id or label raises ``ValueError``."""
    id_index = pd.Index(list(ids))
    if not id_index.is_unique:
        raise ValueError("ids must be unique")
    v = votes[votes["lf"].isin(list(lf_names))]
    r = id_index.get_indexer(v["id"])
    if (r < 0).any():
        raise ValueError(f"votes for unknown id(s): {v['id'][r < 0].unique()[:5].tolist()}")
    lab = pd.Index(list(labels)).get_indexer(v["label"])
    if (lab < 0).any():
        raise ValueError(f"votes for unknown label(s): {v['label'][lab < 0].unique()[:5].tolist()}")
    j = pd.Index(list(lf_names)).get_indexer(v["lf"])
    return VoteMatrix(r, j, lab, len(id_index), len(lf_names))


def top_labels(proba) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a dense or sparse ``(n, k)`` distribution: (argmax index, -1 for an all-zero row;
    the max probability; how many labels share the max)."""
    if sp.issparse(proba):
        P = sp.csr_matrix(proba)
        n = P.shape[0]
        idx = np.full(n, ABSTAIN, dtype=np.int64)
        conf = np.zeros(n)
        ties = np.zeros(n, dtype=np.int64)
        nz = np.diff(P.indptr) > 0
        if nz.any():
            starts = P.indptr[:-1][nz]
            rowmax = np.maximum.reduceat(P.data, starts)
            conf[nz] = rowmax
            row_of = np.repeat(np.arange(n), np.diff(P.indptr))
            at_max = np.isclose(P.data, conf[row_of], rtol=1e-9, atol=1e-12) & (P.data > 0)
            ties = np.bincount(row_of[at_max], minlength=n)
            # first column at the max per row
            pos = np.flatnonzero(at_max)
            first = pd.Series(pos).groupby(row_of[pos]).min()
            idx[first.index.to_numpy()] = P.indices[first.to_numpy()]
        return idx, conf, ties
    P = np.asarray(proba, dtype=float)
    conf = P.max(axis=1) if P.shape[1] else np.zeros(P.shape[0])
    idx = np.where(conf > 0, P.argmax(axis=1), ABSTAIN)
    ties = np.where(conf > 0, np.isclose(P, conf[:, None], rtol=1e-9, atol=1e-12).sum(axis=1), 0)
    return idx, conf, ties


class _Base:
    n_classes_: int

    def _check_fitted(self):
        if not hasattr(self, "n_classes_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(L, n_classes) first")

    def predict(self, L) -> np.ndarray:
        """Label index per text, -1 where the text has no votes."""
        return top_labels(self.predict_proba(L, sparse=True))[0]

    def _dense(self, P: sp.csr_matrix, sparse: bool):
        return P if sparse else P.toarray()


class MajorityVote(_Base):
    """Majority vote. A tie shares the probability uniformly over the tied labels (:meth:`tie_mask`
    flags those texts; ``predict`` returns the lowest tied label index)."""

    def fit(self, L, n_classes: int) -> "MajorityVote":
        self.n_classes_ = int(n_classes)
        return self

    def predict_proba(self, L, sparse: bool = False):
        self._check_fitted()
        C = as_votes(L).counts(self.n_classes_)
        C.sum_duplicates()
        n = C.shape[0]
        row_of = np.repeat(np.arange(n), np.diff(C.indptr))
        rowmax = np.zeros(n)
        nz = np.diff(C.indptr) > 0
        if nz.any():
            rowmax[nz] = np.maximum.reduceat(C.data, C.indptr[:-1][nz])
        at_max = C.data == rowmax[row_of]
        n_tied = np.bincount(row_of[at_max], minlength=n)
        data = np.where(at_max, 1.0 / np.maximum(n_tied[row_of], 1), 0.0)
        P = sp.csr_matrix((data, C.indices, C.indptr), shape=C.shape)
        P.eliminate_zeros()
        return self._dense(P, sparse)

    def tie_mask(self, L) -> np.ndarray:
        """True where two or more labels share the most votes."""
        return top_labels(self.predict_proba(L, sparse=True))[2] > 1


@dataclass
class _Triples:
    """Candidate (text, class) pairs and their pairing with each vote on the same text."""

    cand_row: np.ndarray  # (C,) text row of each candidate, sorted by row
    cand_cls: np.ndarray  # (C,) class of each candidate
    seg_start: np.ndarray  # start of each covered row's candidate segment
    covered: np.ndarray  # (n_cov,) covered rows, in segment order
    t_cand: np.ndarray  # (T,) candidate of each triple
    t_jc: np.ndarray  # (T,) lf * k + candidate class
    diag: np.ndarray  # (T,) bool: the vote equals the candidate class
    off_key: np.ndarray  # (T_off,) (lf * k + class) * k + voted label, for ~diag triples
    rest_rows_lf: np.ndarray  # (V,) LF of each vote (for the rest bucket)
    vote_row: np.ndarray  # (V,) row of each vote
    n: int


def _triples(V: VoteMatrix, k: int) -> _Triples:
    order = np.lexsort((V.labels, V.rows))
    r, j, lab = V.rows[order], V.lfs[order], V.labels[order]
    if len(lab) and lab.max() >= k:
        raise ValueError(f"a vote has label index {lab.max()} but n_classes is {k}")
    cand_key = np.unique(r * k + lab)
    cand_row, cand_cls = cand_key // k, cand_key % k
    n = V.n_texts
    nv = np.bincount(r, minlength=n)
    vstart = np.concatenate([[0], np.cumsum(nv)[:-1]])
    sizes = nv[cand_row]
    T = int(sizes.sum())
    t_cand = np.repeat(np.arange(len(cand_key), dtype=np.int64), sizes)
    within = np.arange(T, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    t_vote = vstart[cand_row][t_cand] + within
    del within
    t_lab = lab[t_vote]
    t_cls = cand_cls[t_cand]
    t_jc = j[t_vote] * k + t_cls
    diag = t_lab == t_cls
    off_key = t_jc[~diag] * k + t_lab[~diag]
    covered, seg_start = np.unique(cand_row, return_index=True)
    return _Triples(cand_row, cand_cls, seg_start, covered, t_cand, t_jc, diag, off_key, j, r, n)


class DawidSkene(_Base):
    """Dawid-Skene EM over per-LF confusion matrices, sparse (see the module docstring).

    Parameters: ``alpha`` -- Dirichlet pseudo-count per confusion row, split ``prior_accuracy`` on the
    diagonal and the rest evenly off it (smoothing for rare classes); ``prior_alpha`` -- pseudo-count per
    class on the class prior; ``tol`` -- stop when the mean log-likelihood per covered text improves by
    less than this; ``max_iter`` -- iteration cap. Learned: ``class_prior_``, ``lf_accuracy_`` (per LF),
    ``diag_`` / ``row_total_`` ((n_lfs, k) soft counts), ``n_iter_``, ``converged_``, ``log_likelihood_``.
    """

    def __init__(
        self, alpha: float = 2.0, prior_accuracy: float = 0.7, prior_alpha: float = 1.0, tol: float = 1e-5, max_iter: int = 100
    ):
        self.alpha = alpha
        self.prior_accuracy = prior_accuracy
        self.prior_alpha = prior_alpha
        self.tol = tol
        self.max_iter = max_iter

    # --- parameters -> log pi per triple -------------------------------------------------------
    def _log_pi(self, tr: _Triples, off_cnt_t: np.ndarray, diag_cnt, row_total) -> np.ndarray:
        k, a, acc0 = self.n_classes_, self.alpha, self.prior_accuracy
        off_a = a * (1 - acc0) / max(k - 1, 1)
        lp = -np.log(row_total[tr.t_jc] + a)
        lp[tr.diag] += np.log(diag_cnt[tr.t_jc[tr.diag]] + a * acc0)
        lp[~tr.diag] += np.log(off_cnt_t + off_a)
        return lp

    def _e_step(self, tr: _Triples, lp: np.ndarray, prior: np.ndarray, lf_err: np.ndarray):
        """Candidate posteriors (C,), rest-bucket posterior per covered row, log-likelihood."""
        score = np.log(prior[tr.cand_cls] + 1e-300) + np.bincount(tr.t_cand, weights=lp, minlength=len(tr.cand_cls))
        n = tr.n
        cand_prior = np.bincount(tr.cand_row, weights=prior[tr.cand_cls], minlength=n)[tr.covered]
        rest_mass = np.clip(1.0 - cand_prior, 0.0, None)
        rest = np.bincount(tr.vote_row, weights=np.log(lf_err[tr.rest_rows_lf]), minlength=n)[tr.covered]
        with np.errstate(divide="ignore"):
            rest = rest + np.log(rest_mass)
        seg_max = np.maximum.reduceat(score, tr.seg_start)
        m = np.maximum(seg_max, rest)
        cand_seg = np.repeat(np.arange(len(tr.covered)), np.diff(np.append(tr.seg_start, len(score))))
        e = np.exp(score - m[cand_seg])
        e_rest = np.exp(rest - m)
        Z = np.add.reduceat(e, tr.seg_start) + e_rest
        ll = float(np.sum(m + np.log(Z)))
        return e / Z[cand_seg], e_rest / Z, ll

    def fit(self, L, n_classes: int) -> "DawidSkene":
        V = as_votes(L)
        k = self.n_classes_ = int(n_classes)
        m = V.n_lfs
        self.n_lfs_ = m
        tr = _triples(V, k)
        off_keys, off_idx = np.unique(tr.off_key, return_inverse=True)
        # majority-vote initialisation: each candidate's share of the text's votes, no rest mass
        C = V.counts(k)
        C.sum_duplicates()
        nv = np.asarray(C.sum(axis=1)).ravel()
        post = np.asarray(C[tr.cand_row, tr.cand_cls]).ravel() / nv[tr.cand_row]
        post_rest = np.zeros(len(tr.covered))
        prev_ll = -np.inf
        self.converged_ = False
        self.n_iter_ = 0
        for it in range(1, self.max_iter + 1):
            # M-step
            w = post[tr.t_cand]
            row_total = np.bincount(tr.t_jc, weights=w, minlength=m * k)
            diag_cnt = np.bincount(tr.t_jc[tr.diag], weights=w[tr.diag], minlength=m * k)
            off_cnt = np.bincount(off_idx, weights=w[~tr.diag], minlength=len(off_keys))
            del w
            a, acc0 = self.alpha, self.prior_accuracy
            acc = (diag_cnt.reshape(m, k).sum(1) + a * acc0) / (row_total.reshape(m, k).sum(1) + a)
            lf_err = np.clip((1 - acc) / max(k - 1, 1), 1e-12, None)
            counts = np.bincount(tr.cand_cls, weights=post, minlength=k) + post_rest.sum() / k + self.prior_alpha
            prior = counts / counts.sum()
            # E-step
            lp = self._log_pi(tr, off_cnt[off_idx], diag_cnt, row_total)
            post, post_rest, ll = self._e_step(tr, lp, prior, lf_err)
            self.n_iter_ = it
            per_text = ll / max(len(tr.covered), 1)
            if np.isfinite(prev_ll) and abs(per_text - prev_ll) < self.tol:
                self.converged_ = True
                break
            prev_ll = per_text
        self.class_prior_ = prior
        self.lf_accuracy_ = acc
        self.lf_error_ = lf_err
        self.diag_ = diag_cnt.reshape(m, k)
        self.row_total_ = row_total.reshape(m, k)
        self.off_keys_ = off_keys
        self.off_counts_ = off_cnt
        self.log_likelihood_ = ll
        return self

    def predict_proba(self, L, sparse: bool = False):
        """``(n, k)`` posteriors. Sparse output holds the voted labels only; the dense output spreads the
        "none of the voted labels" mass evenly over the other labels."""
        self._check_fitted()
        V = as_votes(L)
        k = self.n_classes_
        if V.n_lfs != self.n_lfs_:
            raise ValueError(f"L has {V.n_lfs} LFs, the model was fitted on {self.n_lfs_}")
        n = V.n_texts
        if V.nnz == 0:
            P = sp.csr_matrix((n, k))
            return self._dense(P, sparse)
        tr = _triples(V, k)
        # look the (lf, class, voted label) pairs up among the fitted ones (sorted queries: fast searchsorted)
        q, inv = np.unique(tr.off_key, return_inverse=True)
        off_q = np.zeros(len(q))
        if len(self.off_keys_) and len(q):
            pos = np.minimum(np.searchsorted(self.off_keys_, q), len(self.off_keys_) - 1)
            hit = self.off_keys_[pos] == q
            off_q[hit] = self.off_counts_[pos[hit]]
        off_cnt_t = off_q[inv]
        lp = self._log_pi(tr, off_cnt_t, self.diag_.ravel(), self.row_total_.ravel())
        post, post_rest, _ = self._e_step(tr, lp, self.class_prior_, self.lf_error_)
        P = sp.csr_matrix((post, (tr.cand_row, tr.cand_cls)), shape=(n, k))
        if sparse:
            return P
        D = P.toarray()
        n_cand = np.diff(P.indptr)[tr.covered]
        spread = np.where(k > n_cand, post_rest / np.maximum(k - n_cand, 1), 0.0)
        zero = D[tr.covered] == 0
        D[tr.covered] += zero * spread[:, None]
        return D


class MultiLabelVote(_Base):
    """Per-label binary aggregation for multi-label datasets: the score of label ``l`` on a text is the
    share of the LFs that voted on the text which voted ``l``; ``predict_sets`` keeps labels whose share
    reaches ``min_share``."""

    def __init__(self, min_share: float = 0.5):
        self.min_share = min_share

    def fit(self, L, n_classes: int) -> "MultiLabelVote":
        self.n_classes_ = int(n_classes)
        return self

    def predict_proba(self, L, sparse: bool = False):
        self._check_fitted()
        V = as_votes(L)
        pairs = np.unique(np.stack([V.rows, V.lfs]), axis=1) if V.nnz else np.zeros((2, 0), int)
        n_lfs_on = np.bincount(pairs[0], minlength=V.n_texts)
        # count distinct LFs per (text, label)
        key = np.unique(np.stack([V.rows, V.lfs, V.labels]), axis=1) if V.nnz else np.zeros((3, 0), int)
        C = sp.csr_matrix((np.ones(key.shape[1]), (key[0], key[2])), shape=(V.n_texts, self.n_classes_))
        C.sum_duplicates()
        row_of = np.repeat(np.arange(V.n_texts), np.diff(C.indptr))
        C.data = C.data / n_lfs_on[row_of]
        return self._dense(C, sparse)

    def predict_sets(self, L) -> list[list[int]]:
        P = self.predict_proba(L, sparse=True)
        out = []
        for i in range(P.shape[0]):
            s, e = P.indptr[i], P.indptr[i + 1]
            out.append(sorted(P.indices[s:e][P.data[s:e] >= self.min_share].tolist()))
        return out


LABEL_MODELS = {"majority_vote": MajorityVote, "dawid_skene": DawidSkene}


def make_label_model(name: str, **params):
    """``"majority_vote"`` or ``"dawid_skene"`` (the names used in labelflow.yaml)."""
    if name not in LABEL_MODELS:
        raise ValueError(f"unknown label model {name!r}; choose one of {sorted(LABEL_MODELS)}")
    return LABEL_MODELS[name](**params)
