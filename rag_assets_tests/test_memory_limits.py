"""Inputs whose failure mode is memory, each read in a child process under an address-space limit
(RLIMIT_AS), as a run worker on a small machine: decompression bombs are refused without inflating, and
text with no usable split points chunks in bounded time and memory with no chunk past its bounds."""

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, random, resource, string, sys, time
    limit = int(sys.argv[1]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from rag_assets.chunking import Chunker
    from rag_assets.config import default_model
    from rag_assets.embedding import resolve_model

    chunker = Chunker(resolve_model(default_model()), 200, 32)
    random.seed(0)
    texts = {"word": "x" * 10_000_000, "random line": "".join(random.choices(string.printable, k=10_000_000))}
    out = {}
    for name, text in texts.items():
        started = time.perf_counter()
        chunks = chunker.split(text)
        out[name] = {"seconds": time.perf_counter() - started, "chunks": len(chunks),
                     "max_chars": max(len(c.text) for c in chunks), "max_tokens": max(c.token_count for c in chunks),
                     "covered": sum(len(c.text) for c in chunks) / len(text),
                     "exact": all(text[c.char_start:c.char_end] == c.text for c in chunks)}
    out["max_chunk_chars"], out["capacity"] = chunker.max_chunk_chars, chunker.capacity
    print(json.dumps(out))
""")


def test_a_10_mb_word_and_a_10_mb_random_line_chunk_within_bounds_under_a_memory_limit():
    child = subprocess.run([sys.executable, "-c", CHILD, "3072"], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    for name in ("word", "random line"):
        got = out[name]
        assert got["max_chars"] <= out["max_chunk_chars"] and got["max_tokens"] <= out["capacity"], (name, got)
        assert got["exact"] and got["covered"] >= 0.99, (name, got)  # offsets true, nothing dropped
        assert got["seconds"] < 60, (name, got)  # linear: ~1.4 s per MB of random characters here


BOMBS = textwrap.dedent("""
    import json, resource, sys
    limit = int(sys.argv[1]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from rag_assets.parsing import parse_file

    out = {}
    for name in sys.argv[2:]:
        data = open(name, "rb").read()
        items = list(parse_file("s/" + name.rsplit("/", 1)[1], data))  # the default 64 MiB limit
        out[name.rsplit("/", 1)[1]] = [(getattr(i, "reason", "document"), getattr(i, "detail", "")) for i in items]
    print(json.dumps(out))
""")


def gzip_of_zeros(path, size: int, prefix: bytes = b"", suffix: bytes = b"", fill: bytes = b"\0") -> None:
    """A gzip file inflating to `size` bytes, written a MiB at a time (never held inflated here)."""
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = fill * (1 << 20)
    with open(path, "wb") as f:
        f.write(deflate.compress(prefix))
        for _ in range(size >> 20):
            f.write(deflate.compress(block))
        f.write(deflate.compress(suffix) + deflate.flush())


def test_decompression_bombs_are_refused_without_inflating_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gzip_of_zeros(tmp_path / "bomb.txt.gz", 2 << 30)  # ~2 MB that inflates to 2 GiB
    gzip_of_zeros(tmp_path / "record.jsonl.gz", 2 << 30, b'{"_id": "r", "text": "', b'"}\n', fill=b"a")  # one 2 GiB record
    pq.write_table(pa.table({"_id": ["v"], "text": ["b" * (200 << 20)]}), tmp_path / "value.parquet", compression="zstd")
    files = [str(tmp_path / n) for n in ("bomb.txt.gz", "record.jsonl.gz", "value.parquet")]
    assert all((tmp_path / n).stat().st_size < 8 << 20 for n in ("bomb.txt.gz", "record.jsonl.gz", "value.parquet"))
    child = subprocess.run([sys.executable, "-c", BOMBS, "1024", *files], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]  # under 1 GiB of address space: nothing was inflated
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert {name: [reason for reason, _ in items] for name, items in out.items()} == {
        "bomb.txt.gz": ["too_large"], "record.jsonl.gz": ["too_large"], "value.parquet": ["too_large"]}
    assert "decompresses to more than 67108864 bytes" in out["bomb.txt.gz"][0][1]
    assert "inflates to" in out["value.parquet"][0][1]
