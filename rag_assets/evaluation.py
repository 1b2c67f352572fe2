"""Retrieval evaluation: does the live collection find the right documents?

Queries come from `RAG_EVAL_QUERIES` (JSONL, one `{"query": ..., "doc_ids": [...]}` per line) or, when
none are given, are generated from the corpus as known-item queries: for a deterministic sample of
documents (ordered by a hash of their doc_id), one sentence from the middle third of the text, whose own
document is the answer. To keep them from being trivial exact matches, the sentence is lowercased, its
punctuation is dropped and so is every fourth word: the query is then a substring of no chunk, and
matching it is a test of the embedding, not of string equality. Documents whose text repeats in another
document can make a query ambiguous; that costs every collection the same.

Metrics are over the top `k` chunks a search returns: recall@n is the share of a query's answer documents
among the documents of its first n hits, averaged over queries; mrr@10 is the mean of 1/rank of the first
hit from an answer document (0 when none is in the top 10).

The query set is kept with the `retrieval_eval` materialization (so every evaluation of one collection,
and of an old and a new one during a migration, asks the same questions) and regenerated only when most
of its answer documents have gone; its id says which set a figure belongs to.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
from pyiceberg.expressions import AlwaysTrue

from rag_assets.sparse import query_vectors
from rag_assets.tables import RAW_DOCUMENTS, Lakehouse

K = 10  # hits fetched per query
RECALL_AT = (1, 5, 10)
MIN_VALID = 0.8  # a kept query set is regenerated when fewer of its answer documents still exist
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


@dataclass(frozen=True)
class Query:
    query: str
    doc_ids: tuple[str, ...]


def query_set_id(queries: Sequence[Query]) -> str:
    return hashlib.sha256(json.dumps([asdict(q) for q in queries], sort_keys=True).encode()).hexdigest()[:12]


def load_queries(path: Path) -> list[Query]:
    """The queries of a JSONL file; a malformed line is an error naming the file and the line."""
    queries = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                query, doc_ids = row["query"], row["doc_ids"]
                if not isinstance(query, str) or not query.strip() or not isinstance(doc_ids, list) or not doc_ids:
                    raise ValueError("needs a non-empty \"query\" string and a non-empty \"doc_ids\" list")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"RAG_EVAL_QUERIES {path}, line {number}: {exc}") from exc
            queries.append(Query(query, tuple(str(d) for d in doc_ids)))
    if not queries:
        raise ValueError(f"RAG_EVAL_QUERIES {path} holds no queries")
    return queries


def _rank_key(seed: str, doc_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{doc_id}".encode()).hexdigest()


def known_item_query(doc_id: str, text: str, seed: str = "rag") -> str | None:
    """A sentence (8-40 words) from the middle third of `text`, lowercased, without punctuation and with
    every fourth word dropped; None when the text has no such sentence."""
    third = len(text) // 3
    middle = text[third: 2 * third] if len(text) > 300 else text
    sentences = [words for s in SENTENCE_END.split(middle) if 8 <= len(words := WORD.findall(s)) <= 40]
    if not sentences:
        return None
    words = sentences[int(_rank_key(seed, doc_id), 16) % len(sentences)]
    return " ".join(w.lower() for i, w in enumerate(words) if i % 4 != 3)


def document_ids(lake: Lakehouse) -> pl.DataFrame:
    """shard, doc_id of every document (two narrow columns)."""
    frames = [pl.from_arrow(b) for b in lake.batches(RAW_DOCUMENTS, AlwaysTrue(), ("shard", "doc_id"))]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"shard": pl.String, "doc_id": pl.String})


def known_item_queries(lake: Lakehouse, docs: pl.DataFrame, size: int, seed: str = "rag") -> list[Query]:
    """Up to `size` known-item queries from documents in hash order of their doc_id; texts are read only
    from the partitions of the documents tried."""
    ordered = docs.with_columns(key=pl.col("doc_id").map_elements(lambda d: _rank_key(seed, d), return_dtype=pl.String)).sort("key")
    queries: list[Query] = []
    for start in range(0, ordered.height, size):
        if len(queries) >= size:
            break
        tried = ordered.slice(start, size)
        for (shard,), wanted in tried.partition_by("shard", as_dict=True).items():
            texts = {}
            for batch in lake.where_in_batches(RAW_DOCUMENTS, "doc_id", wanted["doc_id"].to_list(), ("doc_id", "text")):
                texts.update(zip(batch["doc_id"].to_pylist(), batch["text"].to_pylist()))
            for doc_id in wanted["doc_id"]:
                if (query := known_item_query(doc_id, texts.get(doc_id) or "", seed)) is not None:
                    queries.append(Query(query, (doc_id,)))
    ranked = {d: i for i, d in enumerate(ordered["doc_id"])}
    return sorted(queries, key=lambda q: ranked[q.doc_ids[0]])[:size]


def still_answerable(queries: Sequence[Query], docs: pl.DataFrame) -> list[Query]:
    """The queries with at least one answer document that still exists."""
    existing = set(docs["doc_id"].to_list())
    return [q for q in queries if any(d in existing for d in q.doc_ids)]


def evaluate(search: Callable[[list[str]], list[list[str]]], queries: Sequence[Query]) -> dict[str, float | int]:
    """Metrics of `search` (query texts -> the doc_ids of each query's top-K hits, in rank order)."""
    if not queries:
        return {"queries": 0, **{f"recall@{n}": 0.0 for n in RECALL_AT}, "mrr@10": 0.0}
    results = search([q.query for q in queries])
    recall = {n: 0.0 for n in RECALL_AT}
    reciprocal = 0.0
    for q, hits in zip(queries, results):
        answers = set(q.doc_ids)
        for n in RECALL_AT:
            recall[n] += len(answers & set(hits[:n])) / len(answers)
        rank = next((i for i, d in enumerate(hits[:10], 1) if d in answers), None)
        reciprocal += 1 / rank if rank else 0.0
    n_queries = len(queries)
    return {"queries": n_queries, **{f"recall@{n}": round(recall[n] / n_queries, 4) for n in RECALL_AT},
            "mrr@10": round(reciprocal / n_queries, 4)}


def index_searches(embedder, encoder, index, modes: Sequence[str], texts: Sequence[str], k: int = K) -> dict[str, Callable[[list[str]], list[list[str]]]]:
    """`evaluate`'s search over a live collection for each of `modes` (dense, sparse, hybrid). `texts` are
    encoded here, once for all modes (the dense vectors in one model call), so that a timed search times
    the engine only."""
    encoded = dict(zip(texts, query_vectors(list(texts), "hybrid" if encoder else "dense", embedder, encoder)))

    def search_in(mode: str):
        def search(queries: list[str]) -> list[list[str]]:
            with index.session() as session:
                return [[h.payload.get("doc_id") for h in session.search(dense if mode != "sparse" else None, k, None,
                                                                           words if mode != "dense" else None)]
                        for dense, words in (encoded[q] for q in queries)]

        return search

    return {mode: search_in(mode) for mode in modes}


def tolerance_check(current: float, accepted: float | None, tolerance: float) -> tuple[bool, str]:
    """(passed, why): recall@10 may not fall more than `tolerance` below the last accepted value."""
    if accepted is None:
        return True, f"first evaluation of this query set: recall@10 {current:.3f} is the accepted value"
    if current >= accepted - tolerance:
        return True, f"recall@10 {current:.3f} against {accepted:.3f} accepted (tolerance {tolerance:g})"
    return False, (f"recall@10 fell to {current:.3f} from {accepted:.3f} accepted, by more than "
                   f"RAG_EVAL_TOLERANCE={tolerance:g}")
