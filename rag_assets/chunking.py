"""Token-aware chunking with the embedding model's own tokenizer.

semantic-text-splitter (Rust) splits on Markdown structure first (headings, blocks, paragraphs),
then sentences, words and finally characters, packing each chunk up to `capacity` tokens as counted
by the same tokenizer the model uses; so no chunk is ever truncated by the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rag_assets.embedding import ModelInfo, load_tokenizer

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


class Chunker:
    def __init__(self, model: ModelInfo, chunk_tokens: int, overlap_tokens: int):
        from semantic_text_splitter import MarkdownSplitter

        self.capacity = chunk_capacity(model, chunk_tokens, overlap_tokens)
        self.settings_key = chunker_settings_key(model, chunk_tokens, overlap_tokens)
        self.tokenizer = load_tokenizer(model)
        self.splitter = MarkdownSplitter.from_huggingface_tokenizer(self.tokenizer, self.capacity, overlap_tokens)

    def chunk_hash(self, text: str) -> str:
        return hashlib.sha256(f"{self.settings_key}\0{text}".encode()).hexdigest()

    def split(self, text: str) -> list[Chunk]:
        pieces = [(start, piece) for start, piece in self.splitter.chunk_indices(text) if piece.strip()]
        counts = [len(e.ids) for e in self.tokenizer.encode_batch([p for _, p in pieces], add_special_tokens=False)]
        return [
            Chunk(i, piece, start, start + len(piece), count, self.chunk_hash(piece))
            for i, ((start, piece), count) in enumerate(zip(pieces, counts))
        ]
