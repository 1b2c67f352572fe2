import pytest

from rag_assets.chunking import Chunker
from rag_assets.config import default_model
from rag_assets.embedding import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def info():
    return resolve_model(default_model())


def test_model_identity_comes_from_the_shipped_package(info):
    assert info.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.max_seq_length == 256 and len(info.revision) == 12


def test_chunks_fit_the_model_and_slice_the_text(info):
    text = "# Übersicht\n\n" + "\n\n".join(f"## Part {i}\n\n" + "Dies ist ein Satz über Gletscher und Eis. " * 40 for i in range(5))
    chunks = Chunker(info, chunk_tokens=10_000, overlap_tokens=16).split(text)  # asks more than the model reads
    tokenizer = load_tokenizer(info)
    assert len(chunks) > 5
    for c in chunks:
        assert len(tokenizer.encode(c.text).ids) <= info.max_seq_length  # with [CLS]/[SEP]
        assert text[c.char_start : c.char_end] == c.text
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert any(c.text.startswith("## Part 3") for c in chunks), "splits on headings before tokens"


def test_hashes_are_stable_and_depend_on_settings(info):
    text = "Paragraph one about tides.\n\nParagraph two about the moon. " * 30
    a, b = Chunker(info, 64, 8).split(text), Chunker(info, 64, 8).split(text)
    assert [c.chunk_hash for c in a] == [c.chunk_hash for c in b]
    assert all(c.token_count <= 64 for c in a)
    other = Chunker(info, 96, 8).split(text)
    assert not {c.chunk_hash for c in a} & {c.chunk_hash for c in other}


def test_bad_settings_are_clear_errors(info):
    with pytest.raises(ValueError, match="overlap"):
        Chunker(info, 64, 64)


def test_split_many_gives_each_texts_own_chunks_in_order(info):
    """The threaded split is the serial one, text by text, whatever the lengths (threads finish out of order)."""
    chunker = Chunker(info, 64, 8)
    texts = [f"# Doc {i}\n\n" + f"Sentence {i} about glaciers and ice. " * (1 + (i * 37) % 90) for i in range(24)]
    texts[5] = ""  # no chunks
    assert list(chunker.split_many(texts)) == [chunker.split(t) for t in texts]
    assert list(chunker.split_many(texts[:1])) == [chunker.split(texts[0])]
