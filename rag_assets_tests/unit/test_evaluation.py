"""The evaluation's rules: known-item queries, the query file, the metrics and the tolerance."""

import json

import pytest

from rag_assets.evaluation import Query, evaluate, known_item_query, load_queries, query_set_id, tolerance_check

TEXT = ("Intro line. " * 20 + "The checkpointer writes dirty buffers to disk at regular intervals, spreading the I/O load. "
        + "Closing line. " * 20)


def test_a_known_item_query_is_a_mangled_sentence_from_the_middle_and_the_same_every_time():
    query = known_item_query("doc-1", TEXT)
    assert query == known_item_query("doc-1", TEXT)
    assert query == "the checkpointer writes buffers to disk regular intervals spreading i o load"
    assert query not in TEXT.lower()  # every fourth word dropped: no chunk contains it verbatim
    assert known_item_query("doc-1", "Too short. Far too short.") is None


def test_query_files_are_checked_line_by_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"query": "vacuum", "doc_ids": ["a", "b"]}) + "\n\n")
    assert load_queries(good) == [Query("vacuum", ("a", "b"))]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "x", "doc_ids": ["a"]}) + "\n" + json.dumps({"query": "", "doc_ids": ["a"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: needs a non-empty"):
        load_queries(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no queries"):
        load_queries(tmp_path / "empty.jsonl")


def test_metrics_count_answer_documents_among_the_top_hits():
    queries = [Query("q1", ("a",)), Query("q2", ("b", "c")), Query("q3", ("z",))]
    hits = {"q1": ["a", "x"], "q2": ["x", "c", "b"], "q3": ["x"] * 10}
    metrics = evaluate(lambda texts: [hits[t] for t in texts], queries)
    assert metrics == {"queries": 3, "recall@1": round(1 / 3, 4), "recall@5": round(2 / 3, 4), "recall@10": round(2 / 3, 4),
                       "mrr@10": round((1 + 1 / 2 + 0) / 3, 4)}
    assert evaluate(lambda texts: [], [])["queries"] == 0
    assert query_set_id(queries) == query_set_id(list(queries)) != query_set_id(queries[:2])


def test_recall_may_fall_by_the_tolerance_and_no_more():
    assert tolerance_check(0.9, None, 0.02)[0]
    assert tolerance_check(0.881, 0.9, 0.02)[0]
    passed, why = tolerance_check(0.87, 0.9, 0.02)
    assert not passed and "fell to 0.870 from 0.900" in why and "RAG_EVAL_TOLERANCE=0.02" in why
