"""The document source: shards, their cheap fingerprints, and the raw bytes of their files.

A shard is one top-level folder of the source root. Its fingerprint comes from listing metadata only
(relative path, size, mtime) so a sensor tick never reads file contents.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

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


class LocalSource:
    """A local folder; each sub-folder is a shard. Hidden files and folders (".*") are skipped.

    Symbolic links are never followed out of the root: a link whose target lies outside it is listed
    as rejected, so it lands in quarantine with the reason instead of leaking outside data in.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def uri(self, path: str) -> str:
        return (self.root / path).as_uri()

    def list_shards(self) -> dict[str, ShardListing]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"RAG_SOURCE {self.root} is not a folder")
        shards: dict[str, ShardListing] = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            shards[entry.name] = self.list_shard(entry.name)
        return shards

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
            try:
                if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(root_real):
                    listing.files.append(SourceFile(rel, 0, "symlink", "symlink points outside the source root"))
                    continue
                st = entry.stat()  # follows a link that stays inside the root
            except OSError as exc:  # vanished between listing and stat, or a dangling link
                listing.files.append(SourceFile(rel, 0, "unreadable", f"cannot stat file: {exc.strerror or exc}"))
                continue
            listing.files.append(SourceFile(rel, st.st_size, str(st.st_mtime_ns)))
        return listing

    def read_bytes(self, file: SourceFile) -> bytes:
        return (self.root / file.path).read_bytes()


def open_source(location: str) -> LocalSource:
    if "://" in location and not location.startswith("file://"):
        raise NotImplementedError(f"source {location!r}: only local folders are supported so far")
    return LocalSource(location.removeprefix("file://"))
