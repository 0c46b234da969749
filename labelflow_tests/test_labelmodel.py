import numpy as np
import pandas as pd
import pytest

from labelflow.labelmodel import DawidSkene, MajorityVote, MultiLabelVote, VoteMatrix, make_label_model, votes_to_matrix

L_SMALL = np.array([[0, 0, -1], [0, 1, -1], [1, 1, 2], [-1, -1, -1], [2, -1, -1]])


def test_vote_matrix_roundtrip_and_from_long():
    V = VoteMatrix.from_dense(L_SMALL)
    assert V.nnz == 8 and (V.to_dense() == L_SMALL).all()
    votes = pd.DataFrame({"id": ["b", "a", "a"], "lf": ["f", "g", "zzz"], "label": ["y", "x", "x"]})
    M = votes_to_matrix(votes, ["a", "b"], ["f", "g"], ["x", "y"])
    assert (M.to_dense() == np.array([[-1, 0], [1, -1]])).all()
    with pytest.raises(ValueError, match="unknown label"):
        votes_to_matrix(votes.assign(label="q"), ["a", "b"], ["f", "g"], ["x", "y"])


def test_majority_vote_known_answers_and_ties():
    mv = MajorityVote().fit(L_SMALL, 3)
    P = mv.predict_proba(L_SMALL)
    expected = np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 2 / 3, 1 / 3], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(P, [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert not np.allclose(P, expected)
    assert list(mv.predict(L_SMALL)) == [0, 0, 1, -1, 2]
    assert list(mv.tie_mask(L_SMALL)) == [False, True, False, False, False]
    np.testing.assert_allclose(mv.predict_proba(L_SMALL, sparse=True).toarray(), P)


def test_dawid_skene_known_answers_small():
    ds = DawidSkene().fit(L_SMALL, 3)
    P = ds.predict_proba(L_SMALL)
    assert list(ds.predict(L_SMALL)) == [0, 0, 1, -1, 2]
    np.testing.assert_allclose(P[[0, 1, 2, 4]].sum(axis=1), 1.0)
    assert (P[3] == 0).all()
    assert P[0, 0] > 0.9 and P[2, 1] > 0.9 and 0.5 < P[4, 2] < 0.95  # a single vote is not certainty


def synthetic(n=4000, k=3, m=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    L = np.full((n, m), -1)
    for j in range(m):
        cov = rng.random(n) < 0.8
        lab = np.where(rng.random(n) < 0.75, y, rng.integers(0, k, n))
        L[cov, j] = lab[cov]
    for j in (0, 1):  # two LFs systematically call class 0 "1"
        L[(y == 0) & (L[:, j] != -1), j] = 1
    return L, y


def test_dawid_skene_recovers_confusion_better_than_majority_vote():
    L, y = synthetic()
    acc = {}
    for name in ("majority_vote", "dawid_skene"):
        model = make_label_model(name).fit(L, 3)
        p = model.predict(L)
        acc[name] = (p[p >= 0] == y[p >= 0]).mean()
    assert acc["dawid_skene"] > acc["majority_vote"] + 0.03
    ds = DawidSkene().fit(L, 3)
    conf = ds.off_counts_[np.searchsorted(ds.off_keys_, (0 * 3 + 0) * 3 + 1)]  # LF0: true 0 -> voted 1
    assert conf / ds.row_total_[0, 0] > 0.8  # the learned confusion puts most of class 0's mass on 1
    assert ds.diag_[2, 0] / ds.row_total_[2, 0] > 0.7 and ds.converged_


def test_dawid_skene_many_classes_stays_sparse():
    rng = np.random.default_rng(1)
    n, m, k = 2000, 8, 300
    y = rng.integers(0, k, n)
    L = np.where(rng.random((n, m)) < 0.8, y[:, None], rng.integers(0, k, (n, m)))
    L[rng.random((n, m)) < 0.4] = -1
    ds = DawidSkene(max_iter=20).fit(L, k)
    P = ds.predict_proba(L, sparse=True)
    assert P.shape == (n, k) and P.nnz < 5 * n
    p = ds.predict(L)
    assert (p[p >= 0] == y[p >= 0]).mean() > 0.95


def test_multilabel_vote():
    L = np.array([[0, 1, 1], [2, -1, -1]])
    ml = MultiLabelVote(min_share=0.5).fit(L, 3)
    np.testing.assert_allclose(ml.predict_proba(L), [[1 / 3, 2 / 3, 0], [0, 0, 1]])
    assert ml.predict_sets(L) == [[1], [2]]


def test_not_fitted():
    with pytest.raises(RuntimeError, match="not fitted"):
        DawidSkene().predict(L_SMALL)
