"""Shared fixtures: a generated corpus, and a real environment (temp RAG_HOME + DAGSTER_HOME)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rag_assets_tests.emulators import AZURITE, Emulator, azure_filesystem, gcs_filesystem, start_azurite, start_gcs, start_moto

TOPICS = {
    "alpha": {
        "volcano.md": "# Volcanoes\n\nMagma rises through the crust and erupts as lava from a volcano.\n\n"
        "## Ash\n\nVolcanic ash clouds ground aircraft for days.\n",
        "bread.txt": "Baking bread\n\nYeast ferments the dough, producing carbon dioxide that makes bread rise in the oven.\n",
        "page.html": "<html><head><title>Chess openings</title><script>var tracking = 1;</script></head>"
        "<body><h1>Chess</h1><p>The Sicilian Defence answers <b>1.e4</b> with c5.</p></body></html>",
    },
    "beta": {
        "records.jsonl": "\n".join(
            json.dumps(r)
            for r in [
                {"_id": "q1", "title": "Photosynthesis", "text": "Plants turn sunlight, water and carbon dioxide into glucose."},
                {"_id": "q2", "title": "Tides", "text": "The gravity of the moon pulls the oceans and causes tides.", "lang": "en"},
            ]
        )
        + "\n",
        "guide.rst": "Knitting\n========\n\nA purl stitch is the reverse of a knit stitch in knitting patterns.\n",
    },
    "gamma": {
        "corpus.json": json.dumps([{"_id": "c1", "title": "Glaciers", "text": "Glaciers carve U-shaped valleys as the ice slowly flows downhill."}]),
        "notes.md.gz": None,  # filled below (gzip)
        "table.parquet": None,  # filled below (parquet)
    },
}


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(
        pa.table({"_id": ["p1"], "title": ["Honeybees"], "text": ["Honeybees dance to tell the hive where flowers are."]}),
        buf,
    )
    return buf.getvalue()


def write_corpus(root: Path) -> None:
    for shard, files in TOPICS.items():
        (root / shard).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            if name.endswith(".gz"):
                data = gzip.compress(b"# Comets\n\nA comet grows a glowing tail of gas and dust near the sun.\n")
            elif name.endswith(".parquet"):
                data = _parquet_bytes()
            else:
                data = text.encode()
            (root / shard / name).write_bytes(data)


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Bad files next to good ones; returns file name -> expected quarantine reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.txt").write_bytes(os.urandom(2048).replace(b"\0", b"\1") + b"\0")
    (folder / "latin1.md").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "broken.jsonl").write_text('{"_id": "ok", "text": "Kites fly on steady wind."}\n{"_id": "bad", "text": \n')
    (folder / "corrupt.md.gz").write_bytes(b"\x1f\x8b not gzip at all")
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n")
    return {
        "random.txt": "binary",
        "latin1.md": "invalid_utf8",
        "empty.txt": "empty",
        "broken.jsonl": "malformed_json",
        "corrupt.md.gz": "corrupt_gzip",
        "picture.png": "unsupported_type",
    }


@dataclass
class RagEnv:
    home: Path
    source: Path
    dagster_home: Path

    def settings(self):
        from rag_assets.config import Settings

        return Settings.from_env()

    def resources(self):
        from rag_assets.defs.resources import build_resources

        return build_resources(self.settings())

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.get()


# One model cache for the test session: the CPU model's TorchScript trace (and an ONNX export) is made once,
# and every later home loads it with torch alone.
MODEL_CACHE = tempfile.TemporaryDirectory(prefix="rag-test-models-")


def make_env(tmp: Path, mp: pytest.MonkeyPatch, **extra: str) -> RagEnv:
    env = RagEnv(tmp / "rag", tmp / "source", tmp / "dagster")
    env.source.mkdir(parents=True)
    env.dagster_home.mkdir(parents=True)
    # The shipped instance's telemetry and storage (Dagster's SQLite files on kept connections); the tests
    # of the launcher, daemon and UI copy the whole shipped dagster.yaml themselves.
    shipped = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: shipped[k] for k in ("telemetry", "storage")}))
    for key in [k for k in os.environ if k.startswith("RAG_")]:
        mp.delenv(key)
    mp.setenv("RAG_HOME", str(env.home))
    mp.setenv("RAG_SOURCE", str(env.source))
    mp.setenv("DAGSTER_HOME", str(env.dagster_home))
    mp.setenv("RAG_EMBED_DEVICE", "cpu")
    mp.setenv("RAG_MODEL_CACHE", MODEL_CACHE.name)
    # `rag-assets sync` runs its shards in its own process unless a test asks for workers: whether a CLI
    # invoked inside pytest could fork would depend on the threads earlier tests left (shard_workers.py).
    mp.setenv("RAG_SYNC_WORKERS", "1")
    # Each evaluation loads the model in its run: only the tests of retrieval_eval turn it on after syncs.
    mp.setenv("RAG_EVAL_AFTER_SYNC", "false")
    for key, value in extra.items():
        mp.setenv(key, value)
    return env


@pytest.fixture
def rag_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RagEnv:
    return make_env(tmp_path, monkeypatch)


PG = dict(host="127.0.0.1", port=5432, user="postgres")


@pytest.fixture
def postgres_db(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on the machine's PostgreSQL (dropped afterwards), exported as DAGSTER_PG_*.

    Without a server the test is skipped, except under CI=true, where it fails."""
    import uuid

    import psycopg2

    name = f"rag_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(dbname="postgres", **PG)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    for key, value in {"HOST": PG["host"], "PORT": str(PG["port"]), "USER": PG["user"], "PASSWORD": "", "DB": name}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
    yield name
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def moto_server(monkeypatch):
    """moto's AWS server (S3, ECS, Glue, ...) in a subprocess on loopback; boto3 and pyarrow are pointed
    at it through AWS_ENDPOINT_URL and dummy credentials."""
    yield from _serving(start_moto(), monkeypatch, lambda e: e.url)


def _serving(emulator: Emulator, monkeypatch, value):
    """Yield `value(emulator)` with the emulator's environment set; stop it afterwards."""
    try:
        for key, val in emulator.env.items():
            monkeypatch.setenv(key, val)
        yield value(emulator)
    finally:
        emulator.stop()


@pytest.fixture
def gcs(monkeypatch):
    """gcp-storage-emulator with buckets `docs` and `lake`; yields (a gcsfs filesystem, the emulator's URL)."""
    def ready(emulator):
        fs = gcs_filesystem(emulator)
        for bucket in ("docs", "lake"):
            fs.mkdir(bucket)
        return fs, emulator.url

    yield from _serving(start_gcs(), monkeypatch, ready)


@pytest.fixture
def azure(monkeypatch, tmp_path):
    """Azurite's blob service with containers `docs` and `lake`; yields (an adlfs filesystem, the connection
    string). Without Azurite (`make install`) the test is skipped, or fails under CI=true."""
    if not AZURITE.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Azurite is missing ({AZURITE}); `make install` puts it there")
        pytest.skip("Azurite not installed (`make install`)")

    def ready(emulator):
        fs = azure_filesystem(emulator)
        for container in ("docs", "lake"):
            fs.mkdir(container)
        return fs, emulator.env["AZURE_STORAGE_CONNECTION_STRING"]

    yield from _serving(start_azurite(tmp_path / "azurite"), monkeypatch, ready)


def upload_folder(fs, folder: Path, root: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fs.pipe_file(f"{root}/{path.relative_to(folder).as_posix()}", path.read_bytes())
