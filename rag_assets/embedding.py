"""The embedding model: where its files are, what it is called, and encoding text with it.

Model identity is `name@revision`; `embeddings` rows are reused only for the same identity, so a
changed model can never mix its vectors with another's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag_assets.faults import failpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    path: Path  # local folder with the sentence-transformers files
    name: str  # e.g. sentence-transformers/all-MiniLM-L6-v2
    revision: str  # hub commit, or a digest of the weight files for a local folder
    max_seq_length: int  # tokens the model reads, special tokens included

    @property
    def key(self) -> str:
        return f"{self.name}@{self.revision}"


def _weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin"))):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _model_name(path: Path) -> str:
    """Hub id named in the model card (sentence-transformers cards name their repo), else the folder."""
    readme = path / "README.md"
    if readme.exists():
        if m := re.search(r"sentence-transformers/[\w.-]+", readme.read_text(errors="ignore")[:20000]):
            return m.group(0).rstrip(".")
    return path.name


@functools.lru_cache(maxsize=8)
def resolve_model(model: str) -> ModelInfo:
    """A local folder, or a Hugging Face id resolved through the local cache (HF_HUB_OFFLINE works)."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path.resolve()
        name, revision = _model_name(path), _weights_digest(path)
    else:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model))
        name, revision = model, path.name[:12]
    max_len = 512
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        max_len = int(json.loads(st_config.read_text()).get("max_seq_length") or max_len)
    return ModelInfo(path=path, name=name, revision=revision, max_seq_length=max_len)


def load_tokenizer(info: ModelInfo):
    """The model's own fast tokenizer (no torch needed), with truncation and padding off."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def pick_device(requested: str) -> str:
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"RAG_EMBED_DEVICE must be auto, cpu or cuda[:N], got {requested!r}")
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("RAG_EMBED_DEVICE=cuda but no CUDA device is visible to this process")
    return requested


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc only; a no-op elsewhere).

    On the CPU every batch allocates and frees a few hundred MB of activations whose shapes change
    from batch to batch (length-sorted batches under a token budget). glibc keeps the freed blocks in
    its heap, fragmented and resident, so the process grew with every batch, i.e. with the shard: a
    3,000-document shard (10,813 chunks) peaked at 2.8 GB RSS and left the embedding step at 2.6 GB;
    trimmed after each batch, at 1.5 GB and 1.1 GB, with 1.6 GB of the heap free but no longer
    resident (benchmarks/memory.py, benchmarks/RESULTS.md).
    A trim takes ~15 ms against seconds per CPU batch, plus some page faults when the next batch
    reuses the pages. On CUDA the activations live on the device and this is not called.
    """
    if (trim := _malloc_trim()) is not None:
        trim(0)


class Embedder:
    """Normalized float32 vectors from a sentence-transformers model, fed for throughput.

    Texts are sorted by length and cut into batches by a token budget (long texts in small batches,
    short ones in big batches, little padding). A background thread tokenizes and pads the next batch
    into pinned memory while the device runs the current one; results stay on the device until the
    end, so there is one host sync per call, not one per batch. On CUDA the model runs in float16.
    """

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64, batch_tokens: int | None = None):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no weight-loading bar in run logs and CLI output

        self.info = resolve_model(model)
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.cuda = self.device.startswith("cuda")
        started = time.perf_counter()
        self.model = SentenceTransformer(str(self.info.path), device=self.device, local_files_only=True)
        self.model.max_seq_length = self.info.max_seq_length
        if self.cuda:
            self.model.half()
        self.model.eval()
        self.dim = int(self.model.get_embedding_dimension())
        self.dtype = torch.float16 if self.cuda else torch.float32
        # Tokens per batch: a GPU wants big batches, as big as its free memory allows; a CPU gains
        # nothing past a few thousand tokens.
        self.batch_tokens = batch_tokens or (self._cuda_budget() if self.cuda else batch_size * 128)
        log.info("loaded %s on %s in %.1fs", self.info.key, self.device, time.perf_counter() - started)

    def _cuda_budget(self) -> int:
        """Padded tokens per batch that fit in half the free GPU memory (capped at 256k)."""
        import torch

        config = self.model[0].auto_model.config
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        # float16 activations alive at once per token: hidden states and the 4x feed-forward
        # intermediate (~24 x hidden bytes), plus one row of attention scores per head.
        per_token = 24 * hidden + 2 * heads * self.model.max_seq_length
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(4096, min(256 * 1024, int(free * 0.5 / per_token)))

    def batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts`, longest first, in batches of at most `batch_tokens` padded tokens."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        max_len = self.model.max_seq_length
        out, current, width = [], [], 0
        for i in order:
            # ~4 characters per token for English BPE/WordPiece; capped at what the model reads.
            tokens = min(max_len, len(texts[i]) // 4 + 2)
            width = max(width, tokens) if current else tokens
            if current and (len(current) + 1) * width > self.batch_tokens:
                out.append(current)
                current, width = [], tokens
            current.append(i)
        if current:
            out.append(current)
        return out

    def _tokenized(self, texts: list[str], batches: list[list[int]]):
        """Yields (row indices, features), padded and in pinned memory on CUDA, one batch ahead."""
        import queue
        import threading

        import torch

        ready: queue.Queue = queue.Queue(maxsize=2)

        def produce() -> None:
            try:
                for idx in batches:
                    features = self.model.preprocess([texts[i] for i in idx])
                    rows = torch.tensor(idx)
                    if self.cuda:  # pinned, so the copies to the device never wait for the device
                        features = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in features.items()}
                        rows = rows.pin_memory()
                    ready.put((rows, features))
            except BaseException as exc:  # surfaced in the consumer
                ready.put(exc)
            ready.put(None)

        threading.Thread(target=produce, daemon=True, name="tokenize").start()
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit length, in the order of `texts`."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = torch.empty((len(texts), self.dim), dtype=self.dtype, device=self.device)
        with torch.inference_mode():
            for rows, features in self._tokenized(texts, self.batches(texts)):
                features = {k: v.to(self.device, non_blocking=True) if hasattr(v, "to") else v for k, v in features.items()}
                emb = self.model(features)["sentence_embedding"]
                out[rows.to(self.device, non_blocking=True)] = torch.nn.functional.normalize(emb.float(), dim=1).to(self.dtype)
                del emb, features
                if not self.cuda:  # activations live in host memory only on the CPU
                    release_freed_memory()
                failpoint("embed.batch")
        return out.float().cpu().numpy()  # the one host sync
