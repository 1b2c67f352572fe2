"""The one partitioning of every shard asset: a dynamic partition per source shard."""

import dagster as dg

shards = dg.DynamicPartitionsDefinition(name="shards")
