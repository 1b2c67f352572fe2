"""Settings from the environment: catalog selection by configuration, and secrets kept out of config."""

import pytest

from rag_assets.config import Settings, usable_cores
from rag_assets.defs.resources import build_resources
from rag_assets_tests.conftest import make_env


def iceberg(tmp_path, monkeypatch, **env: str):
    make_env(tmp_path, monkeypatch, **env)
    settings = Settings.from_env()
    return settings.iceberg_properties, settings.iceberg_secret_env


def test_default_is_sqlite_with_a_local_warehouse(tmp_path, monkeypatch):
    props, secrets = iceberg(tmp_path, monkeypatch)
    assert props == {"type": "sql", "uri": f"sqlite:///{tmp_path / 'rag' / 'catalog.db'}",
                     "warehouse": (tmp_path / "rag" / "warehouse").as_uri()}
    assert secrets == {}


def test_rest_catalog_gets_no_sql_defaults_and_its_credential_stays_a_variable(tmp_path, monkeypatch):
    props, secrets = iceberg(
        tmp_path, monkeypatch, RAG_ICEBERG_TYPE="rest", RAG_ICEBERG_URI="https://catalog.example.com/api/catalog",
        RAG_ICEBERG_WAREHOUSE="analytics", RAG_ICEBERG_CREDENTIAL="client-id:client-secret",
        RAG_ICEBERG_HEADER__X_ICEBERG_ACCESS_DELEGATION="vended-credentials",
    )
    assert props == {"type": "rest", "uri": "https://catalog.example.com/api/catalog", "warehouse": "analytics",
                     "header.x-iceberg-access-delegation": "vended-credentials"}
    assert secrets == {"credential": "RAG_ICEBERG_CREDENTIAL"}
    resource = build_resources(Settings.from_env())["iceberg"]
    assert "client-secret" not in resource.model_dump_json()


def test_glue_catalog_and_s3_keys(tmp_path, monkeypatch):
    props, secrets = iceberg(
        tmp_path, monkeypatch, RAG_ICEBERG_TYPE="glue", RAG_ICEBERG_GLUE__REGION="eu-central-1",
        RAG_ICEBERG_WAREHOUSE="s3://lake/warehouse", RAG_ICEBERG_S3__ACCESS_KEY_ID="AKIAEXAMPLE",
        RAG_ICEBERG_S3__SECRET_ACCESS_KEY="wJalrXUtnFEMI", RAG_ICEBERG_S3__SESSION_TOKEN="FwoGZXIvYXdz",
    )
    assert props == {"type": "glue", "glue.region": "eu-central-1", "warehouse": "s3://lake/warehouse",
                     "s3.access-key-id": "AKIAEXAMPLE"}
    assert secrets == {"s3.secret-access-key": "RAG_ICEBERG_S3__SECRET_ACCESS_KEY", "s3.session-token": "RAG_ICEBERG_S3__SESSION_TOKEN"}


def test_a_password_in_the_catalog_uri_is_read_only_where_the_catalog_opens(tmp_path, monkeypatch):
    props, secrets = iceberg(tmp_path, monkeypatch, RAG_ICEBERG_URI="postgresql+psycopg2://rag:hunter2@db:5432/rag")
    assert "uri" not in props and secrets == {"uri": "RAG_ICEBERG_URI"}
    resource = build_resources(Settings.from_env())["iceberg"]
    assert "hunter2" not in resource.model_dump_json()
    monkeypatch.delenv("RAG_ICEBERG_URI")  # e.g. a run worker started without the secret
    with pytest.raises(RuntimeError, match="RAG_ICEBERG_URI"):
        resource.lakehouse()


def test_gcs_and_azure_warehouses_use_fsspec_and_keep_their_keys_as_variables(tmp_path, monkeypatch):
    props, secrets = iceberg(
        tmp_path / "azure", monkeypatch, RAG_ICEBERG_WAREHOUSE="abfs://lake@acct.dfs.core.windows.net/warehouse",
        RAG_ICEBERG_ADLS__ACCOUNT_NAME="acct", RAG_ICEBERG_ADLS__ACCOUNT_KEY="a2V5", RAG_ICEBERG_ADLS__SAS_TOKEN="sv=2024",
        RAG_ICEBERG_ADLS__CONNECTION_STRING="AccountKey=a2V5", RAG_ICEBERG_ADLS__CLIENT_SECRET="s3cr3t",
    )
    assert props["py-io-impl"] == "pyiceberg.io.fsspec.FsspecFileIO" and props["adls.account-name"] == "acct"
    assert set(secrets) == {"adls.account-key", "adls.sas-token", "adls.connection-string", "adls.client-secret"}
    props, secrets = iceberg(tmp_path / "gcs", monkeypatch, RAG_ICEBERG_WAREHOUSE="gs://lake/warehouse", RAG_ICEBERG_GCS__TOKEN="ya29.x")
    assert props["py-io-impl"] == "pyiceberg.io.fsspec.FsspecFileIO" and secrets == {"gcs.token": "RAG_ICEBERG_GCS__TOKEN"}
    props, _ = iceberg(tmp_path / "s3", monkeypatch, RAG_ICEBERG_WAREHOUSE="s3://lake/warehouse")
    assert "py-io-impl" not in props  # S3 keeps pyiceberg's own choice (pyarrow)


def test_sources_by_scheme_and_hdfs_is_refused(tmp_path):
    from rag_assets.source import ObjectStoreSource, open_source

    assert ObjectStoreSource("gs://bucket/p", fs=object()).version_field == "generation"
    azure = ObjectStoreSource("abfss://container@acct.dfs.core.windows.net/docs", fs=object())
    assert (azure.bucket, azure.prefix, azure.version_field) == ("container", "docs/", "etag")
    assert azure.uri("s/a.md") == "abfss://container@acct.dfs.core.windows.net/docs/s/a.md"
    with pytest.raises(ValueError, match="expected gs://bucket"):
        ObjectStoreSource("gs://", fs=object())
    with pytest.raises(ValueError, match="HDFS is not supported"):
        open_source("hdfs://namenode/docs")


def test_sync_workers_default_to_two_where_two_cores_are_usable_and_must_be_positive(tmp_path, monkeypatch):
    make_env(tmp_path, monkeypatch)
    monkeypatch.delenv("RAG_SYNC_WORKERS")  # the tests' own default is 1 (conftest.make_env)
    assert Settings.from_env().sync_workers == min(2, usable_cores())
    monkeypatch.setenv("RAG_SYNC_WORKERS", "3")
    assert Settings.from_env().sync_workers == 3
    monkeypatch.setenv("RAG_SYNC_WORKERS", "0")
    with pytest.raises(ValueError, match="RAG_SYNC_WORKERS"):
        Settings.from_env()
