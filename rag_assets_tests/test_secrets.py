"""Secrets (Qdrant API key, AWS credentials, database passwords) never reach logs, run records,
metadata, the code-location snapshot the UI shows, files under the homes, or the tables."""

import json
from pathlib import Path

import pytest
import yaml
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES
from rag_assets_tests.conftest import PG, make_env, write_bad_inputs, write_corpus

ROOT = Path(__file__).parents[1]
SECRETS = {
    "RAG_QDRANT_API_KEY": "qdrant-SECRET-4711",
    "AWS_ACCESS_KEY_ID": "AKIASECRET4712",
    "AWS_SECRET_ACCESS_KEY": "aws-SECRET-4713",
    "RAG_ICEBERG_S3__SECRET_ACCESS_KEY": "s3-SECRET-4714",
    "DAGSTER_PG_PASSWORD": "dagster-SECRET-4715",
}
URI_PASSWORD = "catalog-SECRET-4716"  # PostgreSQL here trusts loopback, so any password connects


def leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS.values(), URI_PASSWORD) if s in text]


@pytest.mark.filterwarnings("ignore:Property `ScheduleDefinition.environment_vars` is deprecated")  # Dagster's own snapshot code
def test_no_secret_reaches_logs_metadata_snapshots_files_or_tables(tmp_path, monkeypatch, postgres_db, capfd):
    env = make_env(
        tmp_path, monkeypatch,
        RAG_ICEBERG_URI=f"postgresql+psycopg2://{PG['user']}:{URI_PASSWORD}@{PG['host']}:{PG['port']}/{postgres_db}",
        RAG_QDRANT_URL=":memory:",
    )
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    config = yaml.safe_load((ROOT / "infra" / "dagster.ecs.yaml").read_text())  # storage password from the env
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: config[k] for k in ("telemetry", "storage")}))
    write_corpus(env.source)
    write_bad_inputs(env.source / "alpha" / "bad")

    instance = env.instance()
    report = run_sync(instance, env.resources()).as_json()
    assert report["totals"]["failed"] == 0

    # The secrets were really in use: the catalog connected with the URI's password, the resource
    # holds the API key's variable, and the instance config read the storage password.
    lake = env.resources()["iceberg"].lakehouse()
    assert lake.catalog.engine.url.password == URI_PASSWORD
    assert instance.run_storage.postgres_url.count(SECRETS["DAGSTER_PG_PASSWORD"]) == 1

    found: dict[str, list[str]] = {}
    from rag_assets.definitions import defs

    snapshot = serialize_value(RepositorySnap.from_def(defs().get_repository_def()))  # built from this test's settings
    # The scan sees resource config: the warehouse, and the names of the variables that hold secrets.
    assert (env.home / "warehouse").as_uri() in snapshot, snapshot[snapshot.find("secret_env") - 400:][:800]
    assert '\\"uri\\": \\"RAG_ICEBERG_URI\\"' in snapshot
    found["code location snapshot"] = leaks(snapshot)
    for run in instance.get_runs():
        found[f"run {run.run_id}"] = leaks(serialize_value(run))
        found[f"events of {run.run_id}"] = leaks("\n".join(serialize_value(e) for e in instance.all_logs(run.run_id)))
    assert len(instance.get_runs()) == 3
    rows = {spec.name: lake.table(spec).scan().to_arrow().drop_columns(["vector"] if spec.name == "embeddings" else []).to_pylist()
            for spec in ALL_TABLES}
    found["table rows"] = leaks(json.dumps(rows, default=str))
    for home in (env.home, env.dagster_home):
        for path in (p for p in home.rglob("*") if p.is_file()):
            found[str(path)] = leaks(path.read_bytes().decode("latin-1"))
    out, err = capfd.readouterr()
    found["stdout/stderr"] = leaks(out + err)
    assert {where: hits for where, hits in found.items() if hits} == {}


def test_the_qdrant_api_key_outside_a_run_is_the_secret_itself(monkeypatch, tmp_path):
    """`status` and `search` open the collection outside any Dagster run, where the resource's EnvVar is not
    resolved by Dagster: the client must still get the key's value, never the variable's name."""
    import warnings

    from rag_assets.config import Settings
    from rag_assets.defs.resources import build_resources
    from rag_assets.search import Searcher

    monkeypatch.setenv("RAG_HOME", str(tmp_path))
    monkeypatch.setenv("RAG_QDRANT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("RAG_QDRANT_API_KEY", "s3cret-key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qdrant-client warns that an API key over plain http is insecure
        for index in (build_resources()["qdrant"].alias_index(), Searcher(Settings.from_env()).alias):
            assert index.client._client._init_options["api_key"] == "s3cret-key"


def test_azure_keys_reach_neither_runs_nor_events_nor_tables(azure, tmp_path, monkeypatch, capfd):
    """The account key inside an Azure connection string (source and warehouse) stays in the environment."""
    from rag_assets.definitions import defs
    from rag_assets_tests.conftest import upload_folder
    from rag_assets_tests.emulators import AZURITE_KEY

    fs, connection = azure
    env = make_env(tmp_path, monkeypatch, RAG_SOURCE="az://docs/corpus", RAG_ICEBERG_WAREHOUSE="abfs://lake/warehouse",
                   RAG_ICEBERG_ADLS__CONNECTION_STRING=connection)
    write_corpus(tmp_path / "corpus")
    upload_folder(fs, tmp_path / "corpus", "docs/corpus")
    instance = env.instance()
    assert run_sync(instance, env.resources()).as_json()["totals"]["failed"] == 0
    assert env.resources()["iceberg"].secret_env == {"adls.connection-string": "RAG_ICEBERG_ADLS__CONNECTION_STRING"}

    texts = {"code location snapshot": serialize_value(RepositorySnap.from_def(defs().get_repository_def()))}
    for run in instance.get_runs():
        texts[f"run {run.run_id}"] = serialize_value(run)
        texts[f"events of {run.run_id}"] = "\n".join(serialize_value(e) for e in instance.all_logs(run.run_id))
    lake = env.resources()["iceberg"].lakehouse()
    texts["table rows"] = json.dumps({spec.name: lake.table(spec).scan().to_arrow().drop_columns(
        ["vector"] if spec.name == "embeddings" else []).to_pylist() for spec in ALL_TABLES}, default=str)
    for home in (env.home, env.dagster_home):
        for path in (p for p in home.rglob("*") if p.is_file()):
            texts[str(path)] = path.read_bytes().decode("latin-1")
    out, err = capfd.readouterr()
    texts["stdout/stderr"] = out + err
    assert [where for where, text in texts.items() if AZURITE_KEY in text] == []
