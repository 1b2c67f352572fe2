"""The code location's default executor.

In its own module: Dagster's defs-folder loader takes a module's `@dg.definitions` function instead of the
objects the module defines, so this must not sit beside the jobs.
"""

import dagster as dg


@dg.definitions
def executor_defs() -> dg.Definitions:
    # The executor of every job that names none, `__ASSET_JOB` included (a backfill or a materialization
    # launched from the UI): a shard's four steps run one after another in one process, as in
    # shard_sync_job, instead of four step subprocesses that each import torch. One cost per shard,
    # however the run was started.
    return dg.Definitions(executor=dg.in_process_executor)
