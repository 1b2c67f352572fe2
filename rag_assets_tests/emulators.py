"""Object-store servers on loopback for the tests and benchmarks/sensor_tick.py: moto (S3),
gcp-storage-emulator (GCS, PyPI) and Azurite (Azure Blob, npm: `make install` puts it into .node/).
Each `start_*` returns a running server with the environment that points the clients at it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

AZURITE = Path(__file__).parents[1] / ".node" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # its well-known key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Emulator:
    proc: subprocess.Popen
    url: str
    env: dict[str, str] = field(default_factory=dict)  # what points boto3 / gcsfs / adlfs at it

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # node waits for idle keep-alive connections to close
            self.proc.kill()
            self.proc.wait(10)


def _started(args: list[str], port: int, what: str, timeout: float) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start within {timeout:.0f} s")
            time.sleep(0.2)


def start_moto() -> Emulator:
    port = free_port()
    proc = _started([sys.executable, "-m", "moto.server", "-p", str(port)], port, "moto server", 30)
    url = f"http://127.0.0.1:{port}"
    return Emulator(proc, url, {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_DEFAULT_REGION": "us-east-1"})


def start_gcs(preload: Path | None = None) -> Emulator:
    """`preload`: a JSON file {"bucket": ..., "objects": {name: text}} put into the emulator before it serves
    (benchmarks: it rewrites its whole object index on every upload, so 10,000 uploads take ~half an hour)."""
    port = free_port()
    if preload is None:
        emulator = str(Path(sys.executable).with_name("gcp-storage-emulator"))
        args = [emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    else:
        args = [sys.executable, "-m", "rag_assets_tests.emulators", "gcs-preloaded", str(port), str(preload)]
    proc = _started(args, port, "gcp-storage-emulator", 120)
    url = f"http://127.0.0.1:{port}"
    # STORAGE_EMULATOR_HOST: gcsfs's own switch to an emulator (anonymous). gcsfs also probes a bucket's
    # layout over gRPC (zonal / hierarchical namespace), which the emulator lacks.
    return Emulator(proc, url, {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})


def start_azurite(data: Path) -> Emulator:
    port = free_port()
    proc = _started([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
                     "--silent", "--skipApiVersionCheck", "--loose"], port, "Azurite", 60)
    url = f"http://127.0.0.1:{port}/devstoreaccount1"
    connection = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={url};"
    return Emulator(proc, url, {"AZURE_STORAGE_CONNECTION_STRING": connection})  # where adlfs looks for it


def gcs_filesystem(emulator: Emulator):
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon", project="test", endpoint_url=emulator.url, skip_instance_cache=True)


def azure_filesystem(emulator: Emulator):
    import adlfs

    return adlfs.AzureBlobFileSystem(connection_string=emulator.env["AZURE_STORAGE_CONNECTION_STRING"], skip_instance_cache=True)


def _serve_gcs_preloaded(port: int, spec: Path) -> None:
    """The emulator, in this process, with the objects of `spec` stored through its own storage layer."""
    import base64
    import hashlib
    import json

    from gcp_storage_emulator.handlers.objects import _make_object_resource
    from gcp_storage_emulator.server import create_server

    wanted = json.loads(spec.read_text())
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=wanted["bucket"])
    storage = server._storage
    save = storage._write_config_to_file
    storage._write_config_to_file = lambda: None  # once at the end, not once per object
    for name, text in wanted["objects"].items():
        body = text.encode()
        obj = _make_object_resource(f"http://127.0.0.1:{port}", wanted["bucket"], name, "text/markdown", len(body))
        obj["md5Hash"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        storage.create_file(wanted["bucket"], name, body, obj)
    storage._write_config_to_file = save
    save()
    server.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["gcs-preloaded"]:
        _serve_gcs_preloaded(int(sys.argv[2]), Path(sys.argv[3]))
