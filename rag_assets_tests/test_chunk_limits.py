"""Text with no usable split points chunks in bounded time and memory, and no chunk passes its bounds.

Run in a child process under an address-space limit (RLIMIT_AS), as a run worker on a small machine."""

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
