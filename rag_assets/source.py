"""The document source: shards, their cheap fingerprints, and the raw bytes of their files.

A shard is one top-level folder of the source root (a local folder, or a prefix of an S3 bucket). Its
fingerprint comes from listing metadata only (relative path, size, mtime or ETag) so a sensor tick never
reads file contents.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".rst", ".html", ".htm", ".json", ".jsonl", ".parquet")


def format_of(name: str) -> str | None:
    """The parser a file name selects ('.md' for 'a.MD.gz'), or None when unsupported."""
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return None


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source root, POSIX separators, starts with the shard name
    size: int
    version: str  # mtime in ns (local) or ETag (object stores): changes whenever the file may have
    rejected: str | None = None  # why the file cannot be read (listed so it is quarantined, not dropped)


@dataclass
class ShardListing:
    shard: str
    files: list[SourceFile] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{f.path}\0{f.size}\0{f.version}\0{f.rejected or ''}\n".encode())
        return digest.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Source:
    """What every source offers; `read_many` overlaps reads for sources with per-request latency."""

    location: str
    read_concurrency = 1
    # Top-level names the last `list_shards` did not take as shards, with the reason (reported by
    # `sync`, `status` and the sensor, never skipped in silence). Set per instance.
    skipped: dict[str, str]

    def uri(self, path: str) -> str: ...  # pragma: no cover - interface
    def list_shards(self) -> dict[str, ShardListing]: ...  # pragma: no cover
    def list_shard(self, shard: str) -> ShardListing: ...  # pragma: no cover
    def has_shard(self, shard: str) -> bool: ...  # pragma: no cover
    def shard_names(self) -> list[str]: ...  # pragma: no cover - fills `skipped`
    def read_bytes(self, file: SourceFile) -> bytes: ...  # pragma: no cover - raises OSError when unreadable

    def read_many(self, files: Iterable[SourceFile]) -> Iterator[tuple[SourceFile, bytes | OSError]]:
        """(file, bytes or the OSError that reading it raised), in the order given.

        At most `read_concurrency` reads are in flight, so memory stays bounded by that many files.
        """

        def read(f: SourceFile) -> bytes | OSError:
            try:
                return self.read_bytes(f)
            except OSError as exc:  # vanished or unreadable since listing
                return exc

        files = iter(files)
        if self.read_concurrency <= 1:
            yield from ((f, read(f)) for f in files)
            return
        with ThreadPoolExecutor(self.read_concurrency, thread_name_prefix="source-read") as pool:
            window = collections.deque((f, pool.submit(read, f)) for f in itertools.islice(files, self.read_concurrency))
            while window:
                f, future = window.popleft()
                for following in itertools.islice(files, 1):
                    window.append((following, pool.submit(read, following)))
                yield f, future.result()


class LocalSource(Source):
    """A local folder; each sub-folder is a shard. Hidden files and folders (".*") are skipped.

    Symbolic links are never followed out of the root: a link whose target lies outside it is listed
    as rejected, so it lands in quarantine with the reason instead of leaking outside data in.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.location = str(self.root)
        self.skipped = {}

    def has_shard(self, shard: str) -> bool:
        return (self.root / shard).is_dir()

    def uri(self, path: str) -> str:
        return (self.root / path).as_uri()

    def shard_names(self) -> list[str]:
        """The top-level folders that are shards (one scandir, no file listed); the rest go to `skipped`."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"RAG_SOURCE {self.root} is not a folder")
        names, self.skipped = [], {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_symlink() and entry.is_dir():
                self.skipped[printable(entry.name)] = "a symlink to a folder (shards are real folders; links are not followed)"
            elif not entry.is_dir(follow_symlinks=False):
                continue  # files directly under the root belong to no shard
            elif entry.name.startswith("."):
                self.skipped[printable(entry.name)] = "hidden (its name starts with '.')"
            elif (bad := bad_shard_name(entry.name)) is not None:
                self.skipped[printable(entry.name)] = bad
            else:
                names.append(entry.name)
        return names

    def list_shards(self) -> dict[str, ShardListing]:
        return {name: self.list_shard(name) for name in self.shard_names()}

    def list_shard(self, shard: str) -> ShardListing:
        """Metadata of every file of the shard (os.scandir: one stat per file, no reads)."""
        listing = ShardListing(shard)
        root_real = self.root.resolve()
        prefix = len(str(self.root)) + 1
        pending = [str(self.root / shard)]
        found: list[os.DirEntry] = []
        while pending:
            try:
                entries = list(os.scandir(pending.pop()))
            except OSError:  # a folder that vanished or cannot be opened: its files are not listed
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    found.append(entry)
        for entry in sorted(found, key=lambda e: e.path):
            rel = entry.path[prefix:].replace(os.sep, "/")
            if (bad := bad_name(rel)) is not None:
                listing.files.append(SourceFile(printable(rel), 0, "bad_name", bad))
                continue
            try:
                if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(root_real):
                    listing.files.append(SourceFile(rel, 0, "symlink", "symlink points outside the source root"))
                    continue
                st = entry.stat()  # follows a link that stays inside the root
            except RuntimeError:  # Path.resolve on a link loop (a -> b -> a)
                listing.files.append(SourceFile(rel, 0, "symlink", "symlink loop"))
                continue
            except OSError as exc:  # vanished between listing and stat, a dangling link, a loop
                listing.files.append(SourceFile(rel, 0, "unreadable", f"cannot stat file: {exc.strerror or exc}"))
                continue
            if not stat.S_ISREG(st.st_mode):  # never opened: a FIFO blocks a reader, a device never ends
                listing.files.append(SourceFile(rel, 0, "special", f"not a regular file ({_file_kind(st.st_mode)})"))
                continue
            listing.files.append(SourceFile(rel, st.st_size, str(st.st_mtime_ns)))
        return listing

    def read_bytes(self, file: SourceFile) -> bytes:
        """The file's bytes, at most as many as it had when listed: O_NONBLOCK so that a file replaced by
        a FIFO since the listing cannot block, and a file that is no longer regular or grew is refused."""
        fd = os.open(self.root / file.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as stream:
            st = os.fstat(stream.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{file.path}: not a regular file any more ({_file_kind(st.st_mode)})")
            data = stream.read(file.size + 1)
        if len(data) > file.size:
            raise OSError(f"{file.path}: changed since listing (larger than the {file.size} bytes listed)")
        return data


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


# A shard name becomes a Dagster partition key and an Iceberg partition folder (`shard=<url-quoted name>`):
# folder names are at most 255 bytes, so names quoting to more than this are refused.
MAX_SHARD_NAME_BYTES = 200


def printable(name: str) -> str:
    """A stable, printable spelling of a name read from the file system (undecodable bytes as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def bad_name(name: str) -> str | None:
    """Why a file or shard name cannot be stored (None when it can): names must be UTF-8 without control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"name is not valid UTF-8: {printable(name)!r}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"name holds control characters: {name!r}"
    return None


def bad_shard_name(name: str) -> str | None:
    """Why a top-level folder cannot be a shard (None when it can)."""
    if (bad := bad_name(name)) is not None:
        return bad
    if len(quote(name, safe="").encode()) > MAX_SHARD_NAME_BYTES:
        return f"name is longer than {MAX_SHARD_NAME_BYTES} bytes once URL-quoted (a partition folder name)"
    return None


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


class ObjectStore(Source):
    """What the object-store sources share: each first-level "folder" under the prefix is a shard; objects
    directly under the prefix, "folder" markers and hidden keys (`.*` anywhere) are skipped; a hidden or
    unusable first-level name is reported in `skipped`. A subclass lists and reads."""

    read_concurrency = 16  # objects fetched at once: per-request latency, not bandwidth, bounds reads
    prefix: str  # "" or "some/prefix/"

    def _listed(self, under: str) -> Iterator[tuple[str, int, str]]:  # pragma: no cover - interface
        """(key relative to the prefix, size, version) of every object under `under`, in key order;
        a key ending in "/" is a folder marker."""
        raise NotImplementedError

    def _top_level(self) -> Iterator[str]:  # pragma: no cover - interface
        """The first-level "folder" names under the prefix (one delimiter listing)."""
        raise NotImplementedError

    def _objects(self, under: str) -> Iterator[tuple[str, SourceFile]]:
        """(shard, file) for every visible object under `under`, in key order."""
        for rel, size, version in self._listed(under):
            shard, sep, rest = rel.partition("/")
            if not sep or not rest or rel.endswith("/") or _hidden(rel):
                if shard.startswith(".") and sep:
                    self.skipped[printable(shard)] = "hidden (its name starts with '.')"
                continue  # objects directly under the prefix belong to no shard; "folder" markers
            if (bad := bad_name(rel)) is not None:
                yield shard, SourceFile(rel, 0, "bad_name", bad)
                continue
            yield shard, SourceFile(rel, size, version)

    def list_shards(self) -> dict[str, ShardListing]:
        shards: dict[str, ShardListing] = {}
        self.skipped = {}
        for shard, f in self._objects(""):
            if (bad := bad_shard_name(shard)) is not None:
                self.skipped[printable(shard)] = bad
            else:
                shards.setdefault(shard, ShardListing(shard)).files.append(f)
        return dict(sorted(shards.items()))

    def list_shard(self, shard: str) -> ShardListing:
        return ShardListing(shard, [f for _, f in self._objects(f"{shard}/")])

    def shard_names(self) -> list[str]:
        """First-level prefixes that are shards, from a delimiter listing (no object listed); the rest go to `skipped`."""
        names, self.skipped = [], {}
        for name in self._top_level():
            if name.startswith("."):
                self.skipped[printable(name)] = "hidden (its name starts with '.')"
            elif (bad := bad_shard_name(name)) is not None:
                self.skipped[printable(name)] = bad
            else:
                names.append(name)
        return sorted(names)


class S3Source(ObjectStore):
    """s3://bucket/prefix, through boto3.

    Listing is `ListObjectsV2` only (1,000 keys per request); a file's version is its ETag, which
    changes whenever the object is rewritten with other bytes. Credentials and endpoint come from
    boto3's usual chain (IAM role, AWS_* variables; AWS_ENDPOINT_URL_S3 for S3-compatible servers).
    """

    def __init__(self, location: str, client=None):
        parts = urlsplit(location)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"RAG_SOURCE {location!r}: expected s3://bucket[/prefix]")
        self.location = location
        self.skipped = {}
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", config=Config(max_pool_connections=self.read_concurrency, retries={"mode": "standard"}))
        self.client = client

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{path}"

    def _listed(self, under: str) -> Iterator[tuple[str, int, str]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + under):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):], obj["Size"], obj["ETag"].strip('"')

    def _top_level(self) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"][len(self.prefix):].rstrip("/")

    def has_shard(self, shard: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{shard}/", MaxKeys=1).get("KeyCount"))

    def read_bytes(self, file: SourceFile) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + file.path
        try:
            # IfMatch: an object rewritten since listing fails here instead of mixing old metadata with new bytes.
            return self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=f'"{file.version}"')["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key} vanished since listing") from exc
            if code in ("PreconditionFailed", "412"):
                raise OSError(f"s3://{self.bucket}/{key} changed since listing (ETag no longer {file.version})") from exc
            raise OSError(f"s3://{self.bucket}/{key}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"s3://{self.bucket}/{key}: {exc}") from exc


class ObjectStoreSource(ObjectStore):
    """gs://bucket/prefix (Google Cloud Storage, through gcsfs) and az://container/prefix or
    abfs[s]://container/prefix (Azure Blob Storage / ADLS Gen2, through adlfs).

    A file's version is the store's own: the object generation on GCS (new on every write), the ETag on
    Azure. A read is guarded against an object rewritten since the listing: after the bytes arrive, the
    object's current version must still be the listed one, else the read fails "changed since listing"
    (the version is compared after the read, so a rewrite at any moment before it is caught; one metadata
    request per object, the same on every store and emulator). Credentials come from each library's usual
    places: application default credentials or GOOGLE_APPLICATION_CREDENTIALS (a service-account file) for
    GCS; AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or
    AZURE_STORAGE_SAS_TOKEN, else DefaultAzureCredential, for Azure. None of them passes through Dagster.
    """

    VERSION_FIELD = {"gs": "generation", "az": "etag", "abfs": "etag", "abfss": "etag"}
    PROTOCOL = {"gs": "gs", "az": "az", "abfs": "abfs", "abfss": "abfs"}

    def __init__(self, location: str, fs=None):
        parts = urlsplit(location)
        if parts.scheme not in self.VERSION_FIELD or not parts.netloc:
            raise ValueError(f"RAG_SOURCE {location!r}: expected gs://bucket[/prefix] or az://container[/prefix]")
        self.location = location
        self.skipped = {}
        self.scheme, self.authority = parts.scheme, parts.netloc
        self.bucket = parts.netloc.split("@")[0]  # abfs://container@account.dfs.core.windows.net/...
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        self.version_field = self.VERSION_FIELD[parts.scheme]
        account = parts.netloc.split("@")[1].split(".")[0] if "@" in parts.netloc else ""
        self.fs = fs or _filesystem(self.PROTOCOL[parts.scheme], account, _credential_env())

    def uri(self, path: str) -> str:
        return f"{self.scheme}://{self.authority}/{self.prefix}{path}"

    @property
    def _root(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")

    def _version(self, info: dict) -> str:
        return str(info.get(self.version_field) or "").strip('"')

    def _listed(self, under: str) -> Iterator[tuple[str, int, str]]:
        self.fs.invalidate_cache()  # every listing is fresh: the libraries cache directory listings
        try:
            found = self.fs.find(f"{self._root}/{under}".rstrip("/"), detail=True, withdirs=False)
        except FileNotFoundError:
            return
        for name, info in sorted(found.items()):
            if info.get("type") != "directory":
                yield name[len(self._root) + 1:], int(info.get("size") or 0), self._version(info)

    def _top_level(self) -> Iterator[str]:
        self.fs.invalidate_cache()
        for entry in self.fs.ls(self._root, detail=True):
            if entry.get("type") == "directory":
                yield entry["name"].rstrip("/").rsplit("/", 1)[-1]

    def has_shard(self, shard: str) -> bool:
        return any(True for _ in self._objects(f"{shard}/"))

    def read_bytes(self, file: SourceFile) -> bytes:
        key = f"{self._root}/{file.path}"
        try:
            data = self.fs.cat_file(key)
            self.fs.invalidate_cache(key)  # the object's metadata as it is now, not as listed
            now = self._version(self.fs.info(key))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.uri(file.path)} vanished since listing") from exc
        except OSError:
            raise
        except Exception as exc:  # the libraries raise their own errors for HTTP failures
            raise OSError(f"{self.uri(file.path)}: {type(exc).__name__}: {exc}") from exc
        if now != file.version:
            raise OSError(f"{self.uri(file.path)} changed since listing ({self.version_field} no longer {file.version})")
        return data


CREDENTIAL_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING",
                  "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN")


def _credential_env() -> tuple[str, ...]:
    return tuple(os.environ.get(name, "") for name in CREDENTIAL_ENV)


@functools.lru_cache(maxsize=8)
def _filesystem(protocol: str, account: str, credential_env: tuple[str, ...]):
    """One gcsfs / adlfs filesystem per process and setting: finding credentials (google-auth asks the
    metadata server) costs seconds, too much for every sensor tick. Keyed by the variables the libraries
    read, so a changed credential or endpoint gets a new one (fsspec's own instance cache would not)."""
    import fsspec

    return fsspec.filesystem(protocol, skip_instance_cache=True, **({"account_name": account} if account else {}))


def open_source(location: str) -> Source:
    """RAG_SOURCE: a local folder (or file://...), s3://bucket/prefix, gs://bucket/prefix, or
    az://container/prefix (abfs[s]:// too)."""
    if location.startswith("s3://"):
        return S3Source(location)
    if location.split("://", 1)[0] in ObjectStoreSource.VERSION_FIELD and "://" in location:
        return ObjectStoreSource(location)
    if "://" in location and not location.startswith("file://"):
        raise ValueError(f"RAG_SOURCE {location!r}: supported are a local folder, file://..., s3://bucket/prefix, "
                         "gs://bucket/prefix and az://container/prefix (abfs://); HDFS is not supported")
    return LocalSource(location.removeprefix("file://"))
