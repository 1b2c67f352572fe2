"""The deletion guard: a broken source never wipes the index.

An unmounted folder, a wrong S3 prefix, expired credentials that list nothing, or a copy that left files
empty look like deletions. Two rules hold them, both at `RAG_MAX_DELETE_FRACTION` (default 0.5):

- Shard: a run that would remove more than that fraction of a shard's points (the chunks of documents
  that are no longer read from the source: gone, or now quarantined) is held by `raw_documents` before
  it writes anything: no table, no point, no quarantine row changes. The hold is recorded in the Dagster
  instance's key-value store (one key per shard, with the listing fingerprint it was held for), so the
  sensor and `rag-assets sync` skip the shard, saying why, until its source changes again or a run is
  allowed; the held run's failure says why in the UI.
- Source: a sync that would remove more than that fraction of all known shards at once removes none
  of them; each is reported held.

`rag-assets sync --allow-deletes`, or the run tag `rag/allow_deletes=true` on a run launched from the UI,
lets a deletion through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

from rag_assets.runs import ALLOW_DELETES_TAG
from rag_assets.shard_state import ROLLED_BACK_REASON

HELD_KEY = "rag/held/"  # + shard: instance key-value store entry of a held shard ("" once it is not)
HELD_METADATA = "rag/held"  # in a held step's failure metadata


@dataclass(frozen=True)
class Hold:
    fingerprint: str  # the listing the shard was held for
    reason: str


class DeletionHeld(dg.Failure):
    """The run would remove too much of a shard: nothing was written."""

    def __init__(self, reason: str):
        super().__init__(description=reason, metadata={HELD_METADATA: True}, allow_retries=False)


def lost_fraction(lost: int, total: int) -> float:
    return lost / total if total else 0.0


def shard_hold_reason(shard: str, lost_points: int, points: int, max_fraction: float) -> str | None:
    """Why a run that removes `lost_points` of the shard's `points` is held, or None when it may go on."""
    if lost_fraction(lost_points, points) <= max_fraction:
        return None
    return (f"deletion guard: the source of shard {shard!r} no longer yields documents holding {lost_points} of its "
            f"{points} points ({lost_fraction(lost_points, points):.0%} > RAG_MAX_DELETE_FRACTION={max_fraction:g}); "
            "nothing was changed. If the deletion is intended: `rag-assets sync --allow-deletes`, or launch the run "
            "with the tag rag/allow_deletes=true")


def removal_hold_reason(removed: int, known: int, max_fraction: float) -> str | None:
    """Why removing `removed` of the `known` shards at once is held, or None."""
    if not removed or lost_fraction(removed, known) <= max_fraction:
        return None
    return (f"deletion guard: the source no longer lists {removed} of the {known} shards "
            f"({lost_fraction(removed, known):.0%} > RAG_MAX_DELETE_FRACTION={max_fraction:g}: an unmounted folder, "
            "a wrong prefix or credentials that list nothing?); no shard was removed. If intended: "
            "`rag-assets sync --allow-deletes`")


def is_held_failure(failure_data) -> bool:
    """Whether a step failure (Dagster's StepFailureData) is the guard's hold."""
    user = getattr(failure_data, "user_failure_data", None)
    return bool(user and user.metadata and HELD_METADATA in user.metadata)


# --- the record the sensor and the CLI read -----------------------------------------------------------


def holds(instance: dg.DagsterInstance, shards: Iterable[str]) -> dict[str, Hold]:
    """The recorded holds of `shards` (one query)."""
    keys = {HELD_KEY + s for s in shards}
    if not keys:
        return {}
    found = instance.run_storage.get_cursor_values(keys)
    return {key[len(HELD_KEY):]: Hold(**json.loads(value)) for key, value in found.items() if value}


def record_hold(instance: dg.DagsterInstance, shard: str, hold: Hold) -> None:
    instance.run_storage.set_cursor_values({HELD_KEY + shard: json.dumps(hold.__dict__)})


def clear_hold(instance: dg.DagsterInstance, shard: str) -> None:
    if holds(instance, [shard]):
        instance.run_storage.set_cursor_values({HELD_KEY + shard: ""})


def held_shards(instance: dg.DagsterInstance, plans, known: int, max_fraction: float, allowed: bool) -> dict[str, str]:
    """shard -> why it is held, for the sensor and `rag-assets sync` (nothing when deletes are allowed): the
    changed shards still held for the listing they have now, and every removed shard when too many are."""
    if allowed:
        return {}
    # "new" too: a shard whose first sync failed after raw_documents has rows but no synced record yet.
    recorded = holds(instance, [p.shard for p in plans if p.status in ("new", "changed")])
    held = {p.shard: recorded[p.shard].reason for p in plans
            if p.status in ("new", "changed") and p.shard in recorded and recorded[p.shard].fingerprint == p.fingerprint}
    removed = [p.shard for p in plans if p.status == "removed"]
    if reason := removal_hold_reason(len(removed), known, max_fraction):
        held.update(dict.fromkeys(removed, reason))
    for p in plans:
        if p.status == "removed" and p.reason == ROLLED_BACK_REASON:
            held.setdefault(p.shard, f"deletion guard: shard {p.shard!r} was restored by a rollback although the source "
                                     "no longer lists it; `rag-assets sync --allow-deletes` removes it")
    return held


def guard_shard(context: dg.AssetExecutionContext, fingerprint: str, lost_points: int, points: int, max_fraction: float) -> None:
    """In `raw_documents`, before it writes: hold the run (DeletionHeld, recorded for the sensor) when it
    would remove too much of the shard and the run does not allow it; else forget an earlier hold."""
    shard = context.partition_key
    reason = None if deletes_allowed(context.run.tags) else shard_hold_reason(shard, lost_points, points, max_fraction)
    if reason:
        record_hold(context.instance, shard, Hold(fingerprint, reason))
        context.log.warning(reason)
        raise DeletionHeld(reason)
    clear_hold(context.instance, shard)


def deletes_allowed(tags: Mapping[str, str]) -> bool:
    return tags.get(ALLOW_DELETES_TAG, "").lower() == "true"
