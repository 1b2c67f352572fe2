"""Asset checks that guard the shard invariants. Each is evaluated by its asset in the same step, on the
rows it has just written, so a check result always belongs to that materialization.

The checks are partitioned like their assets (Dagster 1.13's partitioned asset checks): each result is
recorded against its shard, so the UI shows which shard failed and each shard's latest status, and its
target is that shard's materialization rather than whichever shard ran last. The result's description
and metadata name the shard too, for alerts and logs that show only those.
"""

import warnings

import dagster as dg
import polars as pl

from rag_assets.defs.partitions import shards
from rag_assets.steps.points import mismatches


def shard_check(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():  # partitions on a check spec are "preview" in Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, description=description, partitions_def=shards)


ALL_CHUNKS_EMBEDDED = shard_check(
    "all_chunks_embedded", "embeddings", "Every chunk of the shard has a vector for its current hash and model."
)
INDEX_MATCHES_TABLE = shard_check(
    "index_matches_table", "vector_index", "The live collection holds exactly the points `vector_index` lists for the shard."
)


def all_chunks_embedded(shard: str, chunks: pl.DataFrame, written: pl.DataFrame, model_key: str) -> dg.AssetCheckResult:
    """`chunks`: chunk_id, chunk_hash of the shard; `written`: chunk_id, chunk_hash, model of its embeddings."""
    absent = chunks.join(written.filter(pl.col("model") == model_key), on=["chunk_id", "chunk_hash"], how="anti")["chunk_id"]
    passed = absent.is_empty() and written.height == chunks.height
    return dg.AssetCheckResult(
        check_name=ALL_CHUNKS_EMBEDDED.name,
        passed=passed,
        description=f"shard {shard!r}: " + ("every chunk has its vector" if passed else
                    f"{absent.len()} of {chunks.height} chunks have no {model_key} vector for their hash ({written.height} rows)"),
        metadata={"shard": shard, "chunks": chunks.height, "embedded_rows": written.height, "missing": absent.len(),
                  "missing_sample": dg.MetadataValue.json(absent.head(10).to_list())},
    )


def index_matches_table(shard: str, desired: pl.DataFrame, live: pl.DataFrame) -> dg.AssetCheckResult:
    """`desired`: point_id, chunk_hash the shard's rows list; `live`: the same of the live collection."""
    wrong = mismatches(desired, live)
    passed = not any(wrong.values())
    counts = ", ".join(f"{len(v)} {k}" for k, v in wrong.items())
    return dg.AssetCheckResult(
        check_name=INDEX_MATCHES_TABLE.name,
        passed=passed,
        description=f"shard {shard!r}: " + (f"the collection holds its {live.height} points" if passed else
                    f"the collection differs from vector_index: {counts} points (`rag-assets reconcile` repairs it)"),
        metadata={"shard": shard, "points": live.height, "rows": desired.height, **{k: len(v) for k, v in wrong.items()},
                  "sample": dg.MetadataValue.json([p for v in wrong.values() for p in v][:10])},
    )
