"""Sparse (BM25) vectors: the words of a chunk, which find the exact identifiers, option names and rare
terms that dense vectors miss.

Tokenizing, stopwords, Snowball stemming and BM25's term-frequency part are qdrant-edge's `Bm25` (Rust,
~30 µs a chunk; the same code as a Qdrant server's own BM25 inference, so a query tokenized here matches
documents tokenized anywhere). The IDF part is the engine's: the sparse vector is created with the `idf`
modifier, which weighs each query term by its document frequency in the collection at query time, so
adding documents never re-encodes old ones.

A chunk's sparse vector is computed once, when the chunk is split, and kept in the `chunks` table beside
its text (`sparse_indices`, `sparse_values`, and the `sparse_encoder` that made them): chunks of an
unchanged document are copied with it, never encoded again. The encoder is part of a collection's
identity (`RAG_SPARSE`, `RAG_SPARSE_LANGUAGE`), so changing it is a migration into a new collection.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

SPARSE_VECTOR = "bm25"  # the name of the sparse vector in a collection (the dense one is unnamed)
# BM25 parameters: Qdrant's (and the literature's) defaults. They are part of `key`: a change of them is a
# new encoder, hence a migration (the version suffix says which parameters a key stands for).
K1, B, AVG_LEN = 1.2, 0.75, 256.0
VERSION = "v1"
INDICES_TYPE = pa.list_(pa.field("element", pa.int64(), nullable=False))
VALUES_TYPE = pa.list_(pa.field("element", pa.float32(), nullable=False))


@dataclass(frozen=True)
class SparseEncoder:
    language: str = "english"  # one of config.SPARSE_LANGUAGES

    @property
    def key(self) -> str:
        """What the vectors depend on: recorded with every chunk and in a collection's identity."""
        return f"bm25-{VERSION}:{self.language}"

    @functools.cached_property
    def _model(self):
        from qdrant_edge import Bm25, Bm25Config

        return Bm25(Bm25Config(k=K1, b=B, avg_len=AVG_LEN, language=self.language))

    def documents(self, texts: Sequence[str]) -> tuple[pa.Array, pa.Array]:
        """(indices, values) list arrays of each text's BM25 term weights (IDF left to the engine)."""
        encoded = [self._model.embed_document(t) for t in texts]
        return (pa.array([v.indices for v in encoded], INDICES_TYPE), pa.array([v.values for v in encoded], VALUES_TYPE))

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """(indices, values) of a query: weight 1 for each distinct term (BM25 = sum of idf x tf part)."""
        vector = self._model.embed_query(text)
        return list(vector.indices), list(vector.values)


@functools.lru_cache(maxsize=8)
def encoder_for(key: str | None) -> SparseEncoder | None:
    """The encoder a key (a chunk's `sparse_encoder`, an identity's `sparse`) names; None for none."""
    if not key or key == "none":
        return None
    name, _, language = key.partition(":")
    if name != f"bm25-{VERSION}" or not language:
        raise ValueError(f"unknown sparse encoder {key!r} (this version makes bm25-{VERSION}:<language>)")
    return SparseEncoder(language)


class ModeUnavailable(ValueError):
    """Sparse search asked of a collection without sparse vectors."""


def usable_mode(mode: str, identity: dict | None, collection: str) -> str:
    """The mode a query runs in on `collection`: hybrid on a collection without sparse vectors (made before
    them, or with RAG_SPARSE=none) is dense, so upgrading never breaks search; sparse there is an error."""
    if sparse_of(identity) != "none" or mode == "dense":
        return mode
    if mode == "hybrid":
        return "dense"
    raise ModeUnavailable(f"collection {collection!r} has no sparse vectors (RAG_SPARSE=none when it was built); "
                          "`rag-assets migrate --sparse bm25` builds one that has")


def query_vectors(texts: Sequence[str], mode: str, embedder, encoder: SparseEncoder | None) -> list[tuple]:
    """(dense vector or None, sparse query or None) per text, for `IndexSession.search` in `mode`
    (one that `usable_mode` allows); the dense ones in one model call."""
    dense = list(embedder.encode(list(texts))) if mode != "sparse" else [None] * len(texts)
    sparse = [encoder.query(t) for t in texts] if mode != "dense" else [None] * len(texts)
    return list(zip(dense, sparse))


def sparse_of(identity: dict | None) -> str:
    """The sparse encoder key a collection's points carry ("none": dense vectors only, as before hybrid)."""
    return (identity or {}).get("sparse") or "none"
