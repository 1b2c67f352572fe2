"""What Dagster loads (Dagster's `dg` project layout): every module here is read by
`rag_assets.definitions`. Modules that depend on settings build their definitions in a
`@dg.definitions` function, so that nothing reads the environment at import time."""
