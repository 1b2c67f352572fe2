"""Asset checks that guard the shard invariants. Each is evaluated by its asset in the same step, on the
rows it has just written, so a check result always belongs to that materialization."""

import dagster as dg
import polars as pl

from rag_assets.steps.points import mismatches

ALL_CHUNKS_EMBEDDED = dg.AssetCheckSpec(
    "all_chunks_embedded", asset="embeddings",
    description="Every chunk of the shard has a vector for its current hash and model.",
)
INDEX_MATCHES_TABLE = dg.AssetCheckSpec(
    "index_matches_table", asset="vector_index",
    description="The live collection holds exactly the points `vector_index` lists for the shard.",
)


def all_chunks_embedded(chunks: pl.DataFrame, written: pl.DataFrame, model_key: str) -> dg.AssetCheckResult:
    """`chunks`: chunk_id, chunk_hash of the shard; `written`: chunk_id, chunk_hash, model of its embeddings."""
    absent = chunks.join(written.filter(pl.col("model") == model_key), on=["chunk_id", "chunk_hash"], how="anti")["chunk_id"]
    return dg.AssetCheckResult(
        check_name=ALL_CHUNKS_EMBEDDED.name,
        passed=absent.is_empty() and written.height == chunks.height,
        metadata={"chunks": chunks.height, "embedded_rows": written.height, "missing": absent.len(),
                  "missing_sample": dg.MetadataValue.json(absent.head(10).to_list())},
    )


def index_matches_table(desired: pl.DataFrame, live: pl.DataFrame) -> dg.AssetCheckResult:
    """`desired`: point_id, chunk_hash the shard's rows list; `live`: the same of the live collection."""
    wrong = mismatches(desired, live)
    return dg.AssetCheckResult(
        check_name=INDEX_MATCHES_TABLE.name,
        passed=not any(wrong.values()),
        metadata={"points": live.height, "rows": desired.height, **{k: len(v) for k, v in wrong.items()},
                  "sample": dg.MetadataValue.json([p for v in wrong.values() for p in v][:10])},
    )
