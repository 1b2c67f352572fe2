"""Token-aware chunking with the embedding model's own tokenizer.

semantic-text-splitter (Rust) splits on Markdown structure first (headings, blocks, paragraphs),
then sentences, words and finally characters, packing each chunk up to `capacity` tokens as counted
by the same tokenizer the model uses; so no chunk is ever truncated by the model.

The splitter sizes a chunk by tokenizing the candidate, and it tries many: on the 200-page PostgreSQL
corpus of benchmarks/peers.py (1.27 M characters) it tokenized 14.7 M characters in 16,000 calls, 3.6 s
of its 3.6 s on one core. For BERT WordPiece tokenizers (most sentence-transformers models)
`SpanCounter` answers each call from one tokenizer pass over the document instead: the same counts, so
the same chunks (checked on that corpus and by rag_assets_tests/test_chunking.py), in 0.6 s on one core.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rag_assets.embedding import ModelInfo, cpu_threads, load_tokenizer

SPLITTER_VERSION = "semantic-text-splitter/markdown/v1"
SPECIAL_TOKENS = 2  # [CLS] and [SEP] that the model adds around every input


@dataclass(frozen=True)
class Chunk:
    chunk_index: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    chunk_hash: str


def chunk_id_for(doc_id: str, chunk_index: int) -> str:
    return hashlib.sha256(f"{doc_id}\0{chunk_index}".encode()).hexdigest()[:32]


def chunk_capacity(model: ModelInfo, chunk_tokens: int, overlap_tokens: int) -> int:
    capacity = min(chunk_tokens, model.max_seq_length - SPECIAL_TOKENS)
    if capacity < 8:
        raise ValueError(f"chunk size {chunk_tokens} tokens is too small")
    if not 0 <= overlap_tokens < capacity:
        raise ValueError(f"chunk overlap must be in [0, {capacity}), got {overlap_tokens}")
    return capacity


def chunker_settings_key(model: ModelInfo, chunk_tokens: int, overlap_tokens: int) -> str:
    """Part of every chunk hash: other settings or another tokenizer give other chunks, other hashes."""
    capacity = chunk_capacity(model, chunk_tokens, overlap_tokens)
    return f"{SPLITTER_VERSION}:{model.name}@{model.revision}:{capacity}:{overlap_tokens}"


@functools.lru_cache(maxsize=4)
def load_chunker(model: ModelInfo, chunk_tokens: int, overlap_tokens: int) -> Chunker:
    """The chunker for these settings, built once per process (its tokenizer is read from disk); a Chunker
    holds no state between splits."""
    return Chunker(model, chunk_tokens, overlap_tokens)


class Chunker:
    def __init__(self, model: ModelInfo, chunk_tokens: int, overlap_tokens: int):
        from semantic_text_splitter import MarkdownSplitter

        self.capacity = chunk_capacity(model, chunk_tokens, overlap_tokens)
        self.overlap = overlap_tokens
        self.settings_key = chunker_settings_key(model, chunk_tokens, overlap_tokens)
        self.tokenizer = load_tokenizer(model)
        self.splitter = MarkdownSplitter.from_huggingface_tokenizer(self.tokenizer, self.capacity, overlap_tokens)
        self.counts_spans = counts_spans_exactly(self.tokenizer)

    def chunk_hash(self, text: str) -> str:
        return hashlib.sha256(f"{self.settings_key}\0{text}".encode()).hexdigest()

    @property
    def max_chunk_chars(self) -> int:
        return self.capacity * CHARS_PER_TOKEN_BOUND

    def split(self, text: str) -> list[Chunk]:
        """The text's chunks, each at most `capacity` tokens and `max_chunk_chars` characters.

        Bounded in time and memory whatever the text: the splitter sees at most SEGMENT_CHARS at a time
        (the text is cut at a line break or a space before that, so ordinary documents are unaffected),
        and a piece longer than `max_chunk_chars` (a run of characters with no split point, which the
        tokenizer counts as one [UNK]) is cut into pieces of that many characters."""
        chunks: list[Chunk] = []
        for offset, segment in segments(text, SEGMENT_CHARS):  # counted a segment at a time: bounded memory
            found, count = self._pieces(segment)
            pieces = [(start + s, part) for start, piece in found if piece.strip() for s, part in cut(piece, self.max_chunk_chars)]
            chunks += [Chunk(len(chunks) + i, piece, offset + start, offset + start + len(piece), n, self.chunk_hash(piece))
                       for i, ((start, piece), n) in enumerate(zip(pieces, count(pieces)))]
        return chunks

    def split_many(self, texts: Sequence[str]) -> Iterator[list[Chunk]]:
        """`split` of each text, in order, on every core: the splitter and the tokenizer are Rust and let go
        of the GIL, so 2 threads chunk ~1.6x as fast as one on 2 vCPUs (benchmarks/cores.py). The caller
        bounds memory by the texts it passes (a batch of a partition), as with `split`."""
        if len(texts) < 2:
            yield from map(self.split, texts)
            return
        yield from _split_pool().map(self.split, texts)

    def _pieces(self, segment: str) -> tuple[list[tuple[int, str]], Callable[[list[tuple[int, str]]], list[int]]]:
        """(start, text) pieces of one segment, and what counts the tokens of (start, text) slices of it: the
        structure-aware splitter for ordinary sizes; for a longer segment, windows of `capacity` tokens cut
        at token boundaries from one tokenizer pass (the splitter re-tokenizes as it searches: ~3 s per MB of
        prose and ~28 s per MB of random characters, measured before `SpanCounter`)."""
        if len(segment) <= SPLITTER_MAX_CHARS and self.counts_spans:
            from semantic_text_splitter import MarkdownSplitter

            counter = SpanCounter(self.tokenizer, segment)  # the same splitter, sized from one tokenizer pass
            pieces = MarkdownSplitter.from_callback(counter, self.capacity, self.overlap).chunk_indices(segment)
            return pieces, lambda found: [counter.count(start, piece) for start, piece in found]
        if len(segment) <= SPLITTER_MAX_CHARS:
            return self.splitter.chunk_indices(segment), self._count
        offsets = self.tokenizer.encode(segment, add_special_tokens=False).offsets
        # A window's text tokenizes again to about as many tokens; the margin keeps it within capacity.
        size = self.capacity - WINDOW_MARGIN_TOKENS
        step = max(size - self.overlap, 1)
        pieces = []
        for first in range(0, len(offsets), step):
            last = min(first + size, len(offsets)) - 1
            start, end = offsets[first][0], offsets[last][1]
            pieces.append((start, segment[start:end]))
            if last == len(offsets) - 1:
                break
        return pieces, self._count

    def _count(self, pieces: list[tuple[int, str]]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch([p for _, p in pieces], add_special_tokens=False)]


def counts_spans_exactly(tokenizer) -> bool:
    """Whether `SpanCounter` gives `tokenizer`'s own counts: a BERT WordPiece pipeline, whose normalizer
    works character by character and whose pre-tokenizer cuts words at whitespace and punctuation, so
    that a slice starting and ending between words tokenizes to exactly the document's tokens inside it."""
    spec = json.loads(tokenizer.to_str())
    kind = lambda part: (spec.get(part) or {}).get("type")  # noqa: E731
    return kind("model") == "WordPiece" and kind("pre_tokenizer") == "BertPreTokenizer" and kind("normalizer") in ("BertNormalizer", None)


class SpanCounter:
    """The token count of any slice of `text`, as `tokenizer` counts it alone, from one tokenizer pass over
    `text` (for tokenizers where `counts_spans_exactly`): the splitter's size callback. A slice with an end
    inside a word (the splitter's last resort, cutting words) is tokenized on its own."""

    def __init__(self, tokenizer, text: str):
        # encode_batch lets go of the GIL (encode does not): the chunker's threads tokenize at once.
        encoding = tokenizer.encode_batch([text], add_special_tokens=False)[0]
        self.tokenizer, self.text = tokenizer, text
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        words = np.array(encoding.word_ids, dtype=np.int64)  # no special tokens: every token is in a word
        first = np.flatnonzero(np.diff(words, prepend=-1))  # each word's first token (word ids ascend)
        self.token_starts = offsets[:, 0].tolist()
        self.word_starts = offsets[first, 0].tolist()
        self.word_ends = np.maximum.reduceat(offsets[:, 1], first).tolist() if len(first) else []
        self.cursor = 0  # where the last slice was found: the splitter asks about slices in text order

    def __call__(self, piece: str) -> int:
        # The splitter passes the slice's text, not its place; any place of the same text has the same
        # count, as long as both its ends are between words.
        start = self.text.find(piece, self.cursor)
        if start < 0:
            start = self.text.find(piece)
        if start < 0:
            return self.count(-1, piece)
        self.cursor = start
        return self.count(start, piece)

    def count(self, start: int, piece: str) -> int:
        """Tokens of `piece`, the slice of the text at `start`."""
        end = start + len(piece)
        if start >= 0 and self._between_words(start) and self._between_words(end):
            return bisect.bisect_left(self.token_starts, end) - bisect.bisect_left(self.token_starts, start)
        return len(self.tokenizer.encode(piece, add_special_tokens=False).ids)

    def _between_words(self, position: int) -> bool:
        word = bisect.bisect_left(self.word_starts, position) - 1  # the last word starting before `position`
        return word < 0 or self.word_ends[word] <= position


# Segments longer than this are cut in token windows rather than by the splitter (see `_pieces`).
SPLITTER_MAX_CHARS = 256_000
WINDOW_MARGIN_TOKENS = 8
# WordPiece reads a word of more than 100 characters as one [UNK], so a token can stand for 100 characters;
# real text averages 4-5 characters per token. A chunk may hold 12 characters per token of capacity.
CHARS_PER_TOKEN_BOUND = 12
SEGMENT_CHARS = 1_000_000  # what the splitter is given at once


@functools.cache
def _split_pool() -> ThreadPoolExecutor:
    """One pool per process for `Chunker.split_many`, a thread per core this process may use."""
    return ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="chunker")


def segments(text: str, size: int) -> list[tuple[int, str]]:
    """(offset, piece) of `text` in pieces of at most `size` characters, cut at the last line break (else
    space) of each window when there is one in its second half."""
    out, start = [], 0
    while len(text) - start > size:
        window = text[start:start + size]
        line_break = window.rfind("\n")
        cut_at = line_break if line_break > size // 2 else window.rfind(" ")
        end = start + (cut_at + 1 if cut_at > size // 2 else size)
        out.append((start, text[start:end]))
        start = end
    out.append((start, text[start:]))
    return out


def cut(piece: str, size: int) -> list[tuple[int, str]]:
    """(offset, part) of `piece` in parts of at most `size` characters (one part when it fits)."""
    return [(i, piece[i:i + size]) for i in range(0, len(piece), size)] if len(piece) > size else [(0, piece)]
