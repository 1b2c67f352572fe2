"""A demo source made of real text every Python install carries: the standard library's docs.

No download: each module's pydoc text becomes a Markdown document, grouped into shards by topic.
"""

from __future__ import annotations

import importlib
import pydoc
import re
import warnings
from pathlib import Path

DEMO_SHARDS = {
    "text": ["string", "re", "textwrap", "difflib", "unicodedata", "html", "html.parser", "codecs"],
    "data": ["json", "csv", "sqlite3", "pickle", "shelve", "configparser", "tomllib", "base64", "zlib", "gzip"],
    "numbers": ["math", "cmath", "decimal", "fractions", "random", "statistics", "numbers"],
    "files": ["pathlib", "os.path", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "zipfile", "tarfile"],
    "concurrency": ["threading", "multiprocessing", "concurrent.futures", "subprocess", "sched", "queue", "asyncio"],
    "net": ["socket", "ssl", "urllib.parse", "urllib.request", "http.client", "http.server", "email", "smtplib"],
}

ADDRESS = re.compile(r" at 0x[0-9a-f]{4,}")


def module_markdown(name: str) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
        text = pydoc.render_doc(module, title="%s", renderer=pydoc.plaintext)
    except Exception:  # a module this Python build lacks (e.g. no _ssl): leave it out of the demo
        return None
    summary = (module.__doc__ or "").strip()
    # Default values print as "<object object at 0x7f...>", another address in every process: without
    # them a rebuilt demo source is byte-identical and a second `rag-assets demo` re-embeds nothing.
    text = ADDRESS.sub(" at 0x…", text)
    return f"# {name}\n\n{summary}\n\n## Reference\n\n{text}\n"


def build_demo_source(root: Path) -> int:
    """Write the demo shards under `root` (idempotent: unchanged files are not rewritten)."""
    written = 0
    for shard, modules in DEMO_SHARDS.items():
        folder = root / shard
        folder.mkdir(parents=True, exist_ok=True)
        for name in modules:
            text = module_markdown(name)
            if text is None:
                continue
            path = folder / f"{name}.md"
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            written += 1
    return written
