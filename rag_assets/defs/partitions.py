"""The one partitioning of every shard asset: a dynamic partition per source shard."""

import dagster as dg

shards = dg.DynamicPartitionsDefinition(name="shards")


def add_shards(instance: dg.DagsterInstance, names: list[str]) -> None:
    """Add shard partitions that another process may be adding at the same moment: the instance's unique
    constraint refuses the loser's insert, so what is still missing is added one at a time."""
    from sqlalchemy.exc import IntegrityError

    try:
        instance.add_dynamic_partitions(shards.name, names)
    except IntegrityError:
        for name in names:
            if not instance.has_dynamic_partition(shards.name, name):
                try:
                    instance.add_dynamic_partitions(shards.name, [name])
                except IntegrityError:  # added by the other process in between
                    pass
