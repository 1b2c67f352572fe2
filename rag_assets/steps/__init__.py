"""The named steps the shard assets are recipes of, one module per stage: what to reuse (planning
functions that return small dataclasses), the rows each table gets (row builders), and the streams
between the tables and the model or the index. Nothing here needs a Dagster run."""
