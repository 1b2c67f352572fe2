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


# Text pieces that stress a tokenizer's edges: accents (composed and combining), CJK, emoji, odd spaces,
# control characters, words over WordPiece's 100-character limit ([UNK]), the vocabulary's special tokens
# written in the text, and Markdown structure.
HOSTILE_PIECES = ["é", "e\u0301", "\u0301", "中文", "日本", "😀", "\u00a0", "\u3000", "\u200b", "\x00", "\x07", "\t", "\r\n",
                  "ﬁ", "İ", "ß", "x" * 120, "\ufeff", "\u2028", "\U0001F1FA\U0001F1F8", "[MASK]", "[CLS]", "[MA", "SK]",
                  "# Heading\n", "- item\n", "```\ncode\n```\n", "1. ", "> quote ", ".", ",", "(", ")", "'", "-", "\n\n", " "]
WORDS = ["word", "Token", "the", "splitting", "Überall", "naïve", "café", "PostgreSQL", "can't"]


def hostile_texts(seed: int, count: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(HOSTILE_PIECES) if rng.random() < 0.5 else rng.choice(WORDS) + rng.choice([" ", "", "\n"])
                    for _ in range(rng.randint(1, 300))) for _ in range(count)]


def test_span_counter_counts_every_slice_as_the_tokenizer_does(info):
    """The splitter's size callback (one tokenizer pass per segment) gives the tokenizer's own count for any
    slice, those that cut words included (they are tokenized on their own)."""
    import random

    from rag_assets.chunking import SpanCounter, counts_spans_exactly

    tokenizer = load_tokenizer(info)
    assert counts_spans_exactly(tokenizer)  # the packaged model's chunker takes the fast path
    rng = random.Random(7)
    checked = 0
    for text in hostile_texts(seed=1, count=300):
        counter = SpanCounter(tokenizer, text)
        for _ in range(20):
            start = rng.randint(0, len(text))
            piece = text[start:rng.randint(start, len(text))]
            expected = len(tokenizer.encode(piece, add_special_tokens=False).ids)
            assert counter(piece) == expected, repr(piece)
            assert counter.count(start, piece) == expected, repr(piece)
            checked += 1
    assert checked == 6000


@pytest.mark.parametrize("tokens, overlap", [(8, 2), (24, 6), (64, 16)])
def test_fast_sizing_gives_the_same_chunks_as_the_tokenizer(info, tokens, overlap):
    """Chunks sized by SpanCounter are those the splitter makes when it tokenizes every candidate itself:
    same text, offsets, token counts and hashes (so no stored chunk changes)."""
    fast, tokenized = Chunker(info, tokens, overlap), Chunker(info, tokens, overlap)
    tokenized.counts_spans = False
    texts = hostile_texts(seed=tokens, count=120) + [
        "# Übersicht\n\n" + "\n\n".join(f"## Part {i}\n\n" + "Dies ist ein Satz über Gletscher und Eis. " * 40 for i in range(5))]
    assert [fast.split(t) for t in texts] == [tokenized.split(t) for t in texts]


def test_other_tokenizers_keep_the_splitters_own_sizing():
    """A byte-level BPE tokenizer attaches the space before a word to the word, so a slice does not tokenize
    to the document's tokens inside it: those chunkers size chunks by tokenizing each candidate."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from rag_assets.chunking import counts_spans_exactly

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not counts_spans_exactly(bpe)
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.normalizer = normalizers.BertNormalizer()
    assert counts_spans_exactly(wordpiece)
    wordpiece.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])  # NFKC can merge across a cut
    assert not counts_spans_exactly(wordpiece)
