"""The embedding model: where its files are, what it is called, and encoding text with it.

Model identity is `name@revision`; `embeddings` rows are reused only for the same identity, so a
changed model can never mix its vectors with another's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag_assets.config import usable_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    path: Path  # local folder with the sentence-transformers files
    name: str  # e.g. sentence-transformers/all-MiniLM-L6-v2
    revision: str  # hub commit, or a digest of the weight files for a local folder
    max_seq_length: int  # tokens the model reads, special tokens included
    backend: str = "torch"  # what runs it: torch, or onnx (ONNX Runtime on the CPU)

    @property
    def key(self) -> str:
        """The vectors' identity: another backend's vectors are close (cosine > 0.999) but not the same."""
        return f"{self.name}@{self.revision}" + ("" if self.backend == "torch" else f"+{self.backend}")


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


BACKENDS = ("torch", "onnx")


@functools.lru_cache(maxsize=8)
def resolve_model(model: str, backend: str = "torch") -> ModelInfo:
    """A local folder, or a Hugging Face id resolved through the local cache (HF_HUB_OFFLINE works)."""
    if backend not in BACKENDS:
        raise ValueError(f"RAG_EMBED_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
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
    return ModelInfo(path=path, name=name, revision=revision, max_seq_length=max_len, backend=backend)


def load_tokenizer(info: ModelInfo):
    """The model's own fast tokenizer (no torch needed), with truncation and padding off."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


_cpu_threads = 0  # threads the model and the chunker may use on the CPU; 0: one per usable core


def limit_cpu_threads(threads: int) -> None:
    """Give the model and the chunker of this process `threads` CPU threads (a sync worker's share of the
    cores: shard_workers.py), before they are loaded."""
    global _cpu_threads
    _cpu_threads = threads


def cpu_threads() -> int:
    return _cpu_threads or usable_cores()


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
    trimmed (then after each batch), at 1.5 GB and 1.1 GB, with 1.6 GB of the heap free but no longer
    resident (benchmarks/memory.py, benchmarks/RESULTS.md).
    A trim takes ~15 ms, plus page faults when the next batch reuses the pages: after every batch that
    cost ~15% of the encode time, so `Embedder.encode` trims every TRIM_EVERY_SECONDS instead.
    On CUDA the activations live on the device and this is not called.
    """
    if (trim := _malloc_trim()) is not None:
        trim(0)


# Padded tokens per batch on the CPU: small batches stay in the CPU's caches. On 2-vCPU VMs 2,048 was the
# fastest or within 4% of it for torch; 4,096 was up to 8% slower and 8,192 up to 20%. ONNX Runtime ran
# 3-6% faster at 512-1,024 than at 2,048 on the two AVX-512 VMs measured, and 3.5% slower on the one
# before them (benchmarks/RESULTS.md, "One tokenizer pass for the splitter" and earlier sections).
CPU_BATCH_TOKENS = 2048
ONNX_BATCH_TOKENS = 1024
TRIM_EVERY_SECONDS = 5.0  # CPU: release_freed_memory at most this often while encoding (~1 batch per second here)
TOKENIZER_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}  # model input -> tokenizers.Encoding


class TextBatcher:
    """What every backend shares: texts tokenized once, up front, by the model's own fast tokenizer (one
    Rust call over all texts, truncated to what the model reads), sorted by their exact token count and
    cut into batches by a padded-token budget: long texts in small batches, short ones in big batches,
    almost no padding."""

    device = "cpu"
    cuda = False

    def __init__(self, info: ModelInfo, batch_size: int, batch_tokens: int, input_names: tuple[str, ...]):
        self.info = info
        self.batch_size = batch_size  # at most this many texts per batch on the CPU
        self.tokenizer = load_tokenizer(info)
        self.tokenizer.enable_truncation(info.max_seq_length)  # special tokens included
        if unknown := set(input_names) - set(TOKENIZER_FIELDS):
            raise ValueError(f"model {info.key} wants inputs {sorted(unknown)} that a text tokenizer does not give")
        self.input_names = input_names  # input_ids, attention_mask, ...
        self.batch_tokens = batch_tokens  # padded tokens per batch

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices into `lengths` (token counts), longest first, in batches of at most `batch_tokens`
        padded tokens (and on the CPU at most `batch_size` texts)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        most = len(lengths) if self.cuda else self.batch_size
        out, current, width = [], [], 0
        for i in order:
            width = width if current else lengths[i]  # the first (longest) text sets the batch's width
            if current and ((len(current) + 1) * width > self.batch_tokens or len(current) == most):
                out.append(current)
                current, width = [], lengths[i]
            current.append(i)
        if current:
            out.append(current)
        return out

    def tokenized(self, texts: list[str]) -> tuple[list, list[list[int]]]:
        encodings = self.tokenizer.encode_batch(texts)
        return encodings, self.batches([len(e.ids) for e in encodings])

    def features(self, encodings, idx: list[int]) -> dict[str, np.ndarray]:
        """The model's inputs for one batch: token ids, type ids and mask, right-padded to the batch's widest."""
        width = max(len(encodings[i].ids) for i in idx)
        arrays = {name: np.zeros((len(idx), width), dtype=np.int64) for name in self.input_names}
        for row, i in enumerate(idx):
            for name, array in arrays.items():
                values = getattr(encodings[i], TOKENIZER_FIELDS[name])
                array[row, : len(values)] = values
        return arrays


class Embedder(TextBatcher):
    """Normalized float32 vectors from a sentence-transformers model run by torch, fed for throughput.

    On CUDA a background thread pads the next batch into pinned memory while the device runs the current
    one, results stay on the device until the end (one host sync per call) and the model runs in float16.
    On the CPU, where a second thread would only take a core from torch's own, batches are padded inline.
    """

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64, batch_tokens: int | None = None,
                 cache: Path | None = None):
        """`cache`: the model cache, where a CPU model's TorchScript trace is kept (None: load by transformers)."""
        import torch

        info = resolve_model(model)
        self.device = pick_device(device)
        if _cpu_threads:
            torch.set_num_threads(_cpu_threads)
        self.cuda = self.device.startswith("cuda")
        started = time.perf_counter()
        pooling = plain_pooling(info)
        if pooling:  # what sentence-transformers would run, on transformers alone (or its trace)
            use_trace = cache is not None and not self.cuda
            self.model = PooledTransformer.cached(info, pooling, cache) if use_trace else PooledTransformer.load(info, pooling)
            self.transformer = self.model.transformer
            input_names = self.model.input_names
        else:  # other modules (a Dense layer, ...): sentence-transformers runs them
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no weight-loading bar in run logs and CLI output
            self.model = SentenceTransformer(str(info.path), device=self.device, local_files_only=True)
            self.model.max_seq_length = info.max_seq_length
            self.transformer = self.model[0].auto_model
            input_names = tuple(self.model.tokenizer.model_input_names)
        self.model.to(self.device)
        if self.cuda:
            self.model.half()
        self.model.eval()
        # A GPU wants big batches, as big as its free memory allows; a CPU wants cache-sized ones.
        budget = batch_tokens or (self._cuda_budget(info.max_seq_length) if self.cuda else CPU_BATCH_TOKENS)
        super().__init__(info, batch_size, budget, input_names)
        self.dim = int(self.model.get_embedding_dimension())
        self.dtype = torch.float16 if self.cuda else torch.float32
        log.info("loaded %s on %s in %.1fs", self.info.key, self.device, time.perf_counter() - started)

    def _cuda_budget(self, max_seq_length: int) -> int:
        """Padded tokens per batch that fit in half the free GPU memory (capped at 256k)."""
        import torch

        config = self.transformer.config
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        # float16 activations alive at once per token: hidden states and the 4x feed-forward
        # intermediate (~24 x hidden bytes), plus one row of attention scores per head.
        per_token = 24 * hidden + 2 * heads * max_seq_length
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(4096, min(256 * 1024, int(free * 0.5 / per_token)))

    def _batches_ready(self, encodings, batches: list[list[int]]):
        """Yields (row indices, features) per batch; on CUDA padded one batch ahead into pinned memory."""
        import torch

        def tensors(idx: list[int]) -> dict:
            return {k: torch.from_numpy(v) for k, v in self.features(encodings, idx).items()}

        if not self.cuda:
            for idx in batches:
                yield torch.tensor(idx), tensors(idx)
            return

        import queue
        import threading

        ready: queue.Queue = queue.Queue(maxsize=2)

        def produce() -> None:
            try:
                for idx in batches:  # pinned, so the copies to the device never wait for the device
                    features = {k: v.pin_memory() for k, v in tensors(idx).items()}
                    ready.put((torch.tensor(idx).pin_memory(), features))
            except BaseException as exc:  # surfaced in the consumer
                ready.put(exc)
            ready.put(None)

        threading.Thread(target=produce, daemon=True, name="tokenize").start()
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def encode(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(texts), dim) float32, unit length, in the order of `texts`; `on_batch(n)` after each batch of n."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings, batches = self.tokenized(texts)
        out = torch.empty((len(texts), self.dim), dtype=self.dtype, device=self.device)
        trimmed = time.monotonic()
        with torch.inference_mode():
            for rows, features in self._batches_ready(encodings, batches):
                features = {k: v.to(self.device, non_blocking=True) for k, v in features.items()}
                emb = self.model(features)["sentence_embedding"]
                out[rows.to(self.device, non_blocking=True)] = torch.nn.functional.normalize(emb.float(), dim=1).to(self.dtype)
                del emb, features
                # Activations lived in host memory: hand the freed heap back every few seconds of work
                # (after every batch cost ~15% of the time; never is unbounded: release_freed_memory).
                if not self.cuda and time.monotonic() - trimmed > TRIM_EVERY_SECONDS:
                    release_freed_memory()
                    trimmed = time.monotonic()
                if on_batch:
                    on_batch(len(rows))
        if not self.cuda:
            release_freed_memory()
        return out.float().cpu().numpy()  # the one host sync


# What the onnx backend runs: the transformer exported to ONNX, then mean or CLS pooling and
# normalization in numpy. Models with other modules (a Dense layer, ...) run on torch only.
ONNX_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                "sentence_transformers.models.Normalize"}
ONNX_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}  # sentence-transformers' names
ONNX_MIN_COSINE = 0.999  # an export whose vectors differ more from torch's float32 ones is refused
# The export's file in the model cache. v2: attention, layer norms and GELU fused into ONNX Runtime's own
# kernels (12% faster on one 2-vCPU VM, cosine to torch 0.9999998); a v1 file (model.onnx) is removed once v2 is written.
ONNX_EXPORT_FILE = "model-v2.onnx"
ONNX_OLD_EXPORT_FILE = "model.onnx"
# Model types whose graph ONNX Runtime's transformer optimizer fuses (its BERT rules); others run unfused.
ONNX_FUSED_TYPES = {"bert"}


def onnx_export_path(info: ModelInfo, cache: Path) -> Path:
    """Where the model cache keeps this model's ONNX export."""
    return cache / f"{info.name.replace('/', '--')}@{info.revision}" / ONNX_EXPORT_FILE


def plain_pooling(info: ModelInfo) -> str | None:
    """"mean" or "cls" for a sentence-transformers model that is only Transformer + Pooling (+ Normalize)
    with one of those pooling modes; None for any other (a Dense layer, max pooling, ...)."""
    modules = json.loads((info.path / "modules.json").read_text()) if (info.path / "modules.json").exists() else []
    if not modules or {m["type"] for m in modules} - ONNX_MODULES:
        return None
    pooling = next((m for m in modules if m["type"].endswith("Pooling")), None)
    if pooling is None:
        return None
    config = json.loads((info.path / pooling["path"] / "config.json").read_text())
    enabled = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    return ONNX_POOLING[enabled[0]] if len(enabled) == 1 and enabled[0] in ONNX_POOLING else None


def _pooling_mode(info: ModelInfo) -> str:
    if pooling := plain_pooling(info):
        return pooling
    raise ValueError(f"RAG_EMBED_BACKEND=onnx runs Transformer + mean or CLS Pooling models; {info.name} is another kind: use torch")


class PooledTransformer:
    """A Transformer + Pooling (+ Normalize) sentence-transformers model run without sentence-transformers,
    which brings scikit-learn and more: the same weights, the same forward and the same pooling. The caller
    normalizes, as it does for both. Loaded two ways:

    - `load`: by transformers. 6.8 s instead of 9.1 s for sentence-transformers in a fresh process on a
      2-vCPU VM (benchmarks/RESULTS.md, 2026-12-07); most of it is importing transformers' modeling code.
    - `cached`, on the CPU: the transformer traced by TorchScript, once, into the model cache, and loaded
      from there by torch alone: 1.4 s of CPU instead of 3.8 s on the next VM (RESULTS.md, "The model
      process"). The trace runs the same torch operations on the same weights; the export checks it against
      the transformers model on padded, unpadded, single and truncated batches and refuses it (the model
      then loads by transformers) if any output differs by more than TRACE_MAX_DIFF.
    """

    def __init__(self, module, pooling: str, input_names: tuple[str, ...], dim: int, traced: bool):
        self.module, self.pooling, self.input_names, self.dim, self.traced = module, pooling, input_names, dim, traced
        self.transformer = None if traced else module  # the transformers model (the ONNX export, the CUDA budget)

    @classmethod
    def load(cls, info: ModelInfo, pooling: str) -> PooledTransformer:
        import inspect

        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        transformer = AutoModel.from_pretrained(str(info.path), local_files_only=True, dtype=torch.float32)
        accepted = inspect.signature(transformer.forward).parameters
        names = tuple(name for name in TOKENIZER_FIELDS if name in accepted)  # as its tokenizer gives them
        return cls(transformer, pooling, names, int(transformer.config.hidden_size), traced=False)

    @classmethod
    def cached(cls, info: ModelInfo, pooling: str, cache: Path) -> PooledTransformer:
        """The TorchScript trace from the model cache, made first if it is not there (one process traces,
        racing ones wait for it); the transformers model where the trace was refused or the cache is unusable."""
        from filelock import FileLock

        target = torchscript_export_path(info, cache)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(f"{target}.lock")
            lock.acquire()
        except OSError as exc:  # a read-only or broken cache costs load time, never the model
            log.warning("cannot use the model cache %s (%s); loading %s by transformers", cache, exc, info.key)
            return cls.load(info, pooling)
        try:
            return cls._trace_in_cache(info, pooling, target)
        finally:
            lock.release()

    @classmethod
    def _trace_in_cache(cls, info: ModelInfo, pooling: str, target: Path) -> PooledTransformer:
        import torch

        refused = target.with_name(target.name + ".refused")  # why, for whoever looks
        if refused.exists():
            return cls.load(info, pooling)
        for attempt in (1, 2):
            if not target.exists():
                try:
                    export_torchscript(info, pooling, target)
                except OSError as exc:  # a full or failing disk: this process goes without; the next one tries again
                    log.warning("cannot write the TorchScript trace %s (%s); loading %s by transformers", target, exc, info.key)
                    return cls.load(info, pooling)
                except Exception as exc:  # a trace that differs, or a model TorchScript cannot trace: never again
                    with contextlib.suppress(OSError):
                        refused.write_text(f"{type(exc).__name__}: {exc}\n")
                    log.warning("%s; loading %s by transformers", exc, info.key)
                    return cls.load(info, pooling)
            extra = {TRACE_META_FILE: ""}
            try:
                module = torch.jit.load(str(target), map_location="cpu", _extra_files=extra)
                break
            except Exception as exc:  # damaged after its atomic write: it is only a cache, trace it again
                if attempt == 2:
                    raise
                log.warning("cannot load the TorchScript trace %s (%s); tracing the model again", target, exc)
                target.unlink()
        meta = json.loads(extra[TRACE_META_FILE])
        return cls(module, pooling, tuple(meta["input_names"]), int(meta["dim"]), traced=True)

    def to(self, device: str) -> None:
        self.module.to(device)

    def half(self) -> None:
        self.module.half()

    def eval(self) -> None:
        self.module.eval()

    def get_embedding_dimension(self) -> int:
        return self.dim

    def tokens(self, features: dict):
        """The last hidden state of a batch."""
        if self.traced:
            return self.module(*(features[name] for name in self.input_names))
        return self.module(**features, return_dict=False)[0]

    def __call__(self, features: dict) -> dict:
        tokens = self.tokens(features)
        if self.pooling == "cls":
            return {"sentence_embedding": tokens[:, 0]}
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # sentence-transformers' mean pooling
        return {"sentence_embedding": (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)}


class TraceMismatch(ValueError):
    pass


# The TorchScript trace's file in the model cache, and what it keeps beside the graph.
# A trace is of one torch and one transformers release: an upgrade traces again and removes the old file.
TORCHSCRIPT_FILE = "transformer-cpu-torch{torch}-transformers{transformers}.torchscript"
TRACE_META_FILE = "rag_assets.json"  # input names and dimension
TRACE_MAX_DIFF = 1e-5  # largest difference to the transformers model's last hidden state a trace may have
TRACE_EXAMPLE = ["A short text.", "A longer text, so that the batch the trace is made from is padded like most batches."]
TRACE_PROBES = [  # what the trace is checked on: shapes and masks it was not made with
    ["One text alone, with no padding at all."],
    ["Two texts of one length.", "Two texts of one length."],
    ["Three texts", "of quite different lengths, the longest one with many more words than the others", "x"],
    ["A text longer than the model reads, cut at its maximum length. " * 200, "and a short one"],
]


def torchscript_export_path(info: ModelInfo, cache: Path) -> Path:
    from importlib.metadata import version

    name = TORCHSCRIPT_FILE.format(torch=version("torch"), transformers=version("transformers"))
    return cache / f"{info.name.replace('/', '--')}@{info.revision}" / name


def export_torchscript(info: ModelInfo, pooling: str, target: Path) -> None:
    """The transformer traced by TorchScript from the local weights, checked against the transformers model
    on TRACE_PROBES (TraceMismatch if it differs), written atomically."""
    import torch
    from transformers.utils import logging as hf_logging

    eager = PooledTransformer.load(info, pooling)
    eager.eval()
    names = eager.input_names
    batcher = TextBatcher(info, 64, 1 << 30, names)

    class Positional(torch.nn.Module):  # the inputs in a fixed order: a trace takes no keywords
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs)), return_dict=False)[0]

    def batch(texts: list[str]) -> tuple:
        features = batcher.features(batcher.tokenizer.encode_batch(texts), list(range(len(texts))))
        return tuple(torch.from_numpy(features[name]) for name in names)

    model = Positional(eager.module).eval()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' config notes, printed while it is traced
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for the mask's branches: the probes check them
        try:
            traced = torch.jit.trace(model, batch(TRACE_EXAMPLE), check_trace=False, strict=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        for texts in TRACE_PROBES:
            inputs = batch(texts)
            diff = float((traced(*inputs) - model(*inputs)).abs().max())
            if not diff <= TRACE_MAX_DIFF:
                raise TraceMismatch(f"the TorchScript trace of {info.key} differs from the model by {diff:.2g} "
                                    f"on {len(texts)} texts (allowed: {TRACE_MAX_DIFF:g})")
    meta = {TRACE_META_FILE: json.dumps({"input_names": list(names), "dim": eager.dim, "model": info.key})}
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        torch.jit.save(traced, str(partial), _extra_files=meta)
        os.replace(partial, target)
    except BaseException:  # a full disk leaves no partial file behind
        partial.unlink(missing_ok=True)
        raise
    for old in target.parent.glob("transformer-cpu-*.torchscript*"):  # other releases' traces (and notes)
        if old != target and not old.name.endswith(".lock"):
            old.unlink(missing_ok=True)
    log.info("traced %s into %s", info.key, target)


def export_onnx(info: ModelInfo, target: Path) -> None:
    """The model's transformer as ONNX (torch's exporter, from the local weights: no download), checked
    against the torch model on sample texts, written atomically (a racing export writes the same file)."""
    import torch

    reference = Embedder(str(info.path), "cpu")
    names = reference.input_names
    transformer = reference.transformer
    # (set_attn_implementation: transformers' switch, absent from older releases, which export unfused)
    fused = transformer.config.model_type in ONNX_FUSED_TYPES and hasattr(transformer, "set_attn_implementation")
    if fused:  # the optimizer recognizes attention as the eager code writes it (not torch's SDPA call)
        transformer.set_attn_implementation("eager")  # on this export's own model, loaded above

    class TokenEmbeddings(torch.nn.Module):  # named inputs in, last hidden state out
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer  # a submodule, so its weights are exported as weights

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs))).last_hidden_state

    example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    try:
        with warnings.catch_warnings():  # the tracer's notes on Python control flow in the model code
            warnings.simplefilter("ignore")
            torch.onnx.export(
                TokenEmbeddings(transformer).eval(), example, str(partial), dynamo=False,
                opset_version=17, input_names=list(names), output_names=["token_embeddings"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*names, "token_embeddings")},
            )
        if fused:
            try:
                _fuse(partial, transformer.config)
            except Exception as exc:  # a variant the optimizer's rules do not fit: the op-by-op graph still runs
                log.warning("kept the unfused ONNX export of %s: the transformer optimizer failed (%s)", info.key, exc)
        sample = [f"{i}: " + "ONNX export check, a sentence with words. " * (1 + i * 5) for i in range(12)]
        ours = OnnxEmbedder(info, None, onnx_file=partial).encode(sample)
        cosine = float((ours * reference.encode(sample)).sum(axis=1).min())
        if cosine < ONNX_MIN_COSINE:
            raise RuntimeError(f"the ONNX export of {info.key} differs from torch (cosine {cosine:.5f} < {ONNX_MIN_COSINE}): use RAG_EMBED_BACKEND=torch")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    _remove_old_export(target.parent / ONNX_OLD_EXPORT_FILE)
    log.info("exported %s to %s (cosine to torch %.6f)", info.key, target, cosine)


def _remove_old_export(old: Path) -> None:
    """The export of the earlier format is never read again: removed, unless a process of the earlier
    code holds its lock (exporting it now); its lock file stays, as a lock file must."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{old}.lock", timeout=0):
            old.unlink(missing_ok=True)
    except Timeout:
        log.info("left %s: a process is exporting it", old)


def _fuse(onnx_file: Path, config) -> None:
    """Rewrite the export with ONNX Runtime's fused transformer operators (Attention, SkipLayerNormalization,
    BiasGelu, EmbedLayerNormalization), replacing the file only once the rewrite is written whole. Graph
    rewrites only (opt_level 0): the hardware-specific optimizations are left to the session that loads it,
    on the machine that runs it."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(onnx_file), model_type=config.model_type, num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=0, use_gpu=False)
    fused = onnx_file.with_suffix(".fused")
    try:
        optimized.save_model_to_file(str(fused))
        os.replace(fused, onnx_file)
    finally:
        fused.unlink(missing_ok=True)
    log.info("fused %s", {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})


class OnnxEmbedder(TextBatcher):
    """The same vectors (cosine > 0.999 to torch float32) from ONNX Runtime on the CPU.

    Loading takes ~0.4 s against ~4.5 s for importing torch and sentence-transformers, which is what a small
    sync pays; with the export's fused kernels a call takes ~0.8x the time of `SentenceTransformer.encode`
    (benchmarks/RESULTS.md). The export is made once per model into the model cache (RAG_MODEL_CACHE) and
    reused by every later process.
    """

    def __init__(self, info: ModelInfo, cache: Path | None, batch_size: int = 64, batch_tokens: int | None = None,
                 onnx_file: Path | None = None):
        """`cache`: the folder exports live in (made on first use); `onnx_file`: a given export instead."""
        import onnxruntime as ort
        from filelock import FileLock

        started = time.perf_counter()
        self.pooling = _pooling_mode(info)
        if onnx_file is None:
            onnx_file = onnx_export_path(info, cache)
            with FileLock(f"{onnx_file}.lock"):  # one export per model, whoever gets there first
                if not onnx_file.exists():
                    export_onnx(info, onnx_file)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings only
        options.intra_op_num_threads = cpu_threads()
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # e.g. a cache file damaged after its atomic write
            raise RuntimeError(f"cannot load the ONNX export {onnx_file} ({exc}); delete it and it is exported again") from exc
        super().__init__(info, batch_size, batch_tokens or ONNX_BATCH_TOKENS, tuple(i.name for i in self.session.get_inputs()))
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        log.info("loaded %s (ONNX Runtime) in %.1fs", info.key, time.perf_counter() - started)

    def encode(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(texts), dim) float32, unit length, in the order of `texts`; `on_batch(n)` after each batch of n."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings, batches = self.tokenized(texts)
        for idx in batches:
            features = self.features(encodings, idx)
            tokens = self.session.run(None, features)[0]
            if self.pooling == "cls":
                pooled = tokens[:, 0]
            else:
                mask = features["attention_mask"][..., None].astype(np.float32)
                pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if on_batch:
                on_batch(len(idx))
        return out


_served: dict[tuple, TextBatcher] = {}  # load_embedder's options -> the sync's model process (model_process.py)


def serve_embedder(options: tuple, embedder: TextBatcher | None) -> None:
    """From now on `load_embedder(*options)` in this process (and in processes forked from it) is
    `embedder`: the sync's model process (model_process.py). None: loaded here again."""
    if embedder is None:
        _served.pop(options, None)
    else:
        _served[options] = embedder


def embedder_options(model: str, backend: str = "torch", device: str = "auto", batch_size: int = 64, batch_tokens: int = 0,
                     model_cache: str = "") -> tuple:
    """`load_embedder`'s arguments (`config.Settings.model_options`) as one tuple: what a model process serves."""
    return model, backend, device, int(batch_size), int(batch_tokens), str(model_cache)


def served_embedder(options: tuple) -> TextBatcher | None:
    return _served.get(options)


def load_embedder(*args, **kwargs) -> TextBatcher:
    """The embedder for these settings (`embedder_options`' arguments): the sync's model process's, when
    one serves them, else loaded once per process."""
    options = embedder_options(*args, **kwargs)
    served = served_embedder(options)
    return served if served is not None else load_embedder_here(*options)


@functools.lru_cache(maxsize=2)
def load_embedder_here(model: str, backend: str = "torch", device: str = "auto", batch_size: int = 64, batch_tokens: int = 0,
                       model_cache: str = "") -> TextBatcher:
    """The embedder for these settings, loaded in this process (once)."""
    if backend == "torch":
        return Embedder(model, device, batch_size, batch_tokens or None, Path(model_cache) if model_cache else None)
    if device not in ("auto", "cpu"):
        raise ValueError(f"RAG_EMBED_BACKEND={backend} runs on the CPU; RAG_EMBED_DEVICE={device} needs RAG_EMBED_BACKEND=torch")
    if not model_cache:
        raise ValueError(f"RAG_EMBED_BACKEND={backend} needs a model cache folder for its export (RAG_MODEL_CACHE)")
    return OnnxEmbedder(resolve_model(model, backend), Path(model_cache), batch_size, batch_tokens or None)
