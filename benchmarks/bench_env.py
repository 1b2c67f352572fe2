"""The throwaway environment every benchmark runs in: a temp RAG_HOME, RAG_SOURCE and DAGSTER_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


SHIPPED_DAGSTER_YAML = Path(__file__).parents[1] / "dagster.yaml"


def write_instance_config(dagster_home: Path) -> None:
    """The shipped dagster.yaml's telemetry and storage (Dagster's SQLite files on kept connections), as
    `make demo` has them; its launcher, queue and monitoring serve the daemon, which no benchmark runs."""
    import yaml

    shipped = yaml.safe_load(SHIPPED_DAGSTER_YAML.read_text())
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: shipped[k] for k in ("telemetry", "storage")}))


def temp_rag_env(prefix: str, **extra: str) -> Path:
    """A fresh temp folder with rag/, src/ and dagster/ (the shipped instance config), exported as
    RAG_HOME, RAG_SOURCE and DAGSTER_HOME (plus `extra` variables); returns the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(RAG_HOME=str(tmp / "rag"), RAG_SOURCE=str(tmp / "src"), DAGSTER_HOME=str(tmp / "dagster"), **extra)
    write_instance_config(tmp / "dagster")
    return tmp
