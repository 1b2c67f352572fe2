"""The throwaway environment every benchmark runs in: a temp RAG_HOME, RAG_SOURCE and DAGSTER_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_rag_env(prefix: str, **extra: str) -> Path:
    """A fresh temp folder with rag/, src/ and dagster/ (telemetry off), exported as RAG_HOME,
    RAG_SOURCE and DAGSTER_HOME (plus `extra` variables); returns the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(RAG_HOME=str(tmp / "rag"), RAG_SOURCE=str(tmp / "src"), DAGSTER_HOME=str(tmp / "dagster"), **extra)
    (tmp / "dagster").mkdir()
    (tmp / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return tmp
