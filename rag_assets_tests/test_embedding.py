"""The embedding path: batching, correctness against sentence-transformers, CUDA precision, benchmark."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag_assets.config import default_model
from rag_assets.embedding import Embedder

ROOT = Path(__file__).parents[1]


def texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    words = "glacier orchard lighthouse typeset bee railway canal volcano tide comet knit chess bread".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 180))) + f" #{i}" for i in range(n)]


@pytest.fixture(scope="module")
def cpu_embedder():
    return Embedder(default_model(), "cpu", batch_size=16, batch_tokens=1024)


def test_batches_are_length_sorted_within_the_token_budget_and_cover_every_text_once(cpu_embedder):
    lengths = [len(e.ids) for e in cpu_embedder.tokenizer.encode_batch(texts(300))]
    batches = cpu_embedder.batches(lengths)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first: little padding
    assert max(lengths) <= cpu_embedder.info.max_seq_length  # truncated to what the model reads
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= cpu_embedder.batch_tokens
        assert len(b) <= cpu_embedder.batch_size
    assert max(map(len, batches)) > len(batches[0])  # short texts go in bigger batches


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model(), device="cpu")


def test_encode_matches_sentence_transformers_in_input_order(cpu_embedder, sentence_transformer):
    sample = texts(120) + ["", "ü ß 漢字 🎉 \u0301", "[CLS] [SEP] [MASK]"]
    ours = cpu_embedder.encode(sample)
    reference = sentence_transformer.encode(sample, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (123, 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * reference).sum(axis=1).min() > 0.99999
    assert float(np.abs(ours - reference).max()) < 1e-5  # the same forward and pooling: float noise only
    assert cpu_embedder.encode([]).shape == (0, 384)
    long_text = texts(1)[0] * 20  # far past the model's 256 tokens: truncated as sentence-transformers does
    assert float(cpu_embedder.encode([long_text])[0] @ sentence_transformer.encode([long_text], normalize_embeddings=True)[0]) > 0.9999


def test_plain_models_run_without_importing_sentence_transformers():
    """A Transformer + Pooling model (the default one) loads through transformers alone: importing
    sentence-transformers costs every embedding process seconds (scikit-learn and a training stack)."""
    code = ("import sys; from rag_assets.embedding import Embedder; from rag_assets.config import default_model; "
            "e = Embedder(default_model(), 'cpu'); v = e.encode(['a text']); "
            "print(sorted(m for m in ('sentence_transformers', 'sklearn') if m in sys.modules), v.shape, e.input_names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "[] (1, 384) ('input_ids', 'token_type_ids', 'attention_mask')"


def test_a_cpu_model_loads_from_its_torchscript_trace_with_the_same_vectors(cpu_embedder, tmp_path):
    """The trace is made once into the model cache; a later process loads it with torch alone (no
    transformers import) and gives the vectors of the transformers model."""
    from rag_assets.embedding import torchscript_export_path

    sample = texts(60) + ["", "x"]
    first = Embedder(default_model(), "cpu", batch_size=16, batch_tokens=1024, cache=tmp_path)
    assert first.model.traced and first.transformer is None
    trace = torchscript_export_path(first.info, tmp_path)
    assert trace.is_file() and not list(trace.parent.glob(".*partial"))
    np.testing.assert_allclose(first.encode(sample), cpu_embedder.encode(sample), atol=1e-6)

    code = ("import sys, json; from rag_assets.embedding import Embedder; from rag_assets.config import default_model; "
            f"e = Embedder(default_model(), 'cpu', 16, 1024, cache=__import__('pathlib').Path({str(tmp_path)!r})); "
            f"v = e.encode({sample!r}); print(json.dumps(['transformers' in sys.modules, e.model.traced, v.tolist()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported, traced, vectors = json.loads(out.stdout.splitlines()[-1])
    assert not imported and traced
    np.testing.assert_allclose(np.array(vectors), cpu_embedder.encode(sample), atol=1e-6)


def test_a_trace_that_differs_is_refused_once_a_damaged_one_is_made_again_and_no_cache_still_loads(cpu_embedder, tmp_path, monkeypatch):
    from rag_assets import embedding

    sample = texts(20)
    monkeypatch.setattr(embedding, "TRACE_MAX_DIFF", -1.0)  # no trace can pass: as if the trace took another branch
    refused = Embedder(default_model(), "cpu", cache=tmp_path / "refused")
    trace = embedding.torchscript_export_path(refused.info, tmp_path / "refused")
    assert not refused.model.traced and not trace.exists()
    assert "differs from the model" in trace.with_name(trace.name + ".refused").read_text()
    np.testing.assert_allclose(refused.encode(sample), cpu_embedder.encode(sample), atol=1e-6)
    monkeypatch.setattr(embedding, "export_torchscript", lambda *a: pytest.fail("a refused trace is not tried again"))
    assert not Embedder(default_model(), "cpu", cache=tmp_path / "refused").model.traced

    monkeypatch.undo()
    trace = embedding.torchscript_export_path(refused.info, tmp_path / "damaged")
    trace.parent.mkdir(parents=True)
    trace.write_bytes(b"not a TorchScript archive")  # e.g. a disk that lost the file's blocks
    older = trace.with_name("transformer-cpu-torch2.0.0-transformers4.0.0.torchscript")  # before an upgrade
    older.write_bytes(b"an older release's trace")
    again = Embedder(default_model(), "cpu", cache=tmp_path / "damaged")
    assert again.model.traced and trace.stat().st_size > 1_000_000
    assert not older.exists()  # removed once this release's trace is written
    np.testing.assert_allclose(again.encode(sample), cpu_embedder.encode(sample), atol=1e-6)

    (tmp_path / "a-file").write_text("")  # a cache that cannot be made: the model still loads
    assert not Embedder(default_model(), "cpu", cache=tmp_path / "a-file").model.traced

    import torch

    def disk_full(*args, **kwargs):
        open(args[1], "wb").write(b"half a trace")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", disk_full)  # no trace this time, no partial file, no refusal
    full = Embedder(default_model(), "cpu", cache=tmp_path / "full")
    folder = embedding.torchscript_export_path(full.info, tmp_path / "full").parent
    assert not full.model.traced and sorted(p.name for p in folder.iterdir()) == [trace.name + ".lock"]

    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("cannot trace this")))
    untraceable = Embedder(default_model(), "cpu", cache=tmp_path / "untraceable")  # a model TorchScript cannot trace
    assert not untraceable.model.traced
    refusal = embedding.torchscript_export_path(untraceable.info, tmp_path / "untraceable")
    assert refusal.with_name(refusal.name + ".refused").read_text() == "RuntimeError: cannot trace this\n"
    np.testing.assert_allclose(untraceable.encode(sample), cpu_embedder.encode(sample), atol=1e-6)


def test_onnx_backend_gives_the_same_vectors_under_its_own_identity_and_exports_once(cpu_embedder, tmp_path):
    from rag_assets.defs.resources import ModelResource
    from rag_assets.embedding import ONNX_OLD_EXPORT_FILE, OnnxEmbedder, onnx_export_path, resolve_model

    model = ModelResource(model=default_model(), backend="onnx", model_cache=str(tmp_path))
    old_export = onnx_export_path(resolve_model(default_model(), "onnx"), tmp_path).with_name(ONNX_OLD_EXPORT_FILE)
    old_export.parent.mkdir(parents=True)
    old_export.write_bytes(b"an export of an earlier format")  # replaced, not kept beside the new one
    onnx = model.embedder()
    assert isinstance(onnx, OnnxEmbedder) and onnx.device == "cpu" and onnx.dim == 384
    assert model.info().key == cpu_embedder.info.key + "+onnx"  # never mixed with torch's vectors
    assert model.chunker_settings_key() == ModelResource(model=default_model()).chunker_settings_key()  # same chunks
    sample = texts(120)
    ours = onnx.encode(sample)
    assert ours.shape == (120, 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * cpu_embedder.encode(sample)).sum(axis=1).min() >= 0.999  # in input order
    assert onnx.encode([]).shape == (0, 384)
    exported = list(tmp_path.rglob("*.onnx"))
    assert len(exported) == 1 and not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.fused"))
    import onnx  # the export runs ONNX Runtime's fused kernels, not torch's attention spelled out op by op
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= {n.op_type for n in onnx.load(exported[0]).graph.node}
    stamp = exported[0].stat().st_mtime_ns
    again = OnnxEmbedder(resolve_model(default_model(), "onnx"), tmp_path)  # a later process: the export is reused
    assert exported[0].stat().st_mtime_ns == stamp and np.allclose(again.encode(sample[:5]), ours[:5], atol=1e-6)
    damaged = tmp_path / "damaged" / exported[0].relative_to(tmp_path)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(exported[0].read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="delete it and it is exported again"):
        OnnxEmbedder(resolve_model(default_model(), "onnx"), tmp_path / "damaged")
    with pytest.raises(ValueError, match="RAG_EMBED_BACKEND=torch"):
        ModelResource(model=default_model(), backend="onnx", device="cuda", model_cache=str(tmp_path)).embedder()
    with pytest.raises(ValueError, match="RAG_MODEL_CACHE"):
        ModelResource(model=default_model(), backend="onnx").embedder()
    with pytest.raises(ValueError, match="RAG_EMBED_BACKEND must be"):
        resolve_model(default_model(), "tensorflow")


def test_onnx_export_keeps_the_unfused_graph_when_the_optimizer_fails(tmp_path, monkeypatch, caplog):
    import onnx

    from rag_assets import embedding

    def fails(*args):
        raise ValueError("no rule fits this graph")

    monkeypatch.setattr(embedding, "_fuse", fails)
    info = embedding.resolve_model(default_model(), "onnx")
    onnx_model = embedding.OnnxEmbedder(info, tmp_path)  # exported, checked against torch, loaded
    assert onnx_model.encode(texts(3)).shape == (3, 384)
    (exported,) = tmp_path.rglob("*.onnx")
    assert "Attention" not in {n.op_type for n in onnx.load(exported).graph.node}
    assert "kept the unfused ONNX export" in caplog.text and "no rule fits this graph" in caplog.text


def test_onnx_backend_loads_without_torch(tmp_path):
    from rag_assets.embedding import OnnxEmbedder, resolve_model

    OnnxEmbedder(resolve_model(default_model(), "onnx"), tmp_path)  # the export (needs torch), here
    code = ("import sys; from pathlib import Path; from rag_assets.embedding import OnnxEmbedder, resolve_model; "
            f"e = OnnxEmbedder(resolve_model({default_model()!r}, 'onnx'), Path({str(tmp_path)!r})); e.encode(['x']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


torch = pytest.importorskip("torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16_vectors_match_float32_cpu_vectors(cpu_embedder):
    sample = texts(2000)
    gpu = Embedder(default_model(), "cuda")
    assert gpu.dtype == torch.float16 and gpu.batch_tokens >= 4096
    cosine = (gpu.encode(sample) * cpu_embedder.encode(sample)).sum(axis=1)
    assert cosine.min() >= 0.99, cosine.min()


@pytest.mark.timeout(300)
def test_throughput_benchmark_runs_ci_sized_on_cpu():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "embed_throughput.py"), "--chunks", "120", "--device", "cpu",
         "--batch-sizes", "16,64", "--check-sample", "40"],
        capture_output=True, text=True, timeout=280, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["chunks"] == 120 and result["tokens"] > 0
    assert set(result["raw_model"]["by_batch_size"]) == {"16", "64"}
    assert result["asset_tokens_per_s"] > 0 and result["raw_model"]["tokens_per_s"] > 0
    assert result["min_cosine_vs_fp32_cpu"] > 0.9999  # CPU float32 on both sides
    # A gross regression of the asset's model path shows up even on a noisy 2-core machine.
    assert result["ratio_model_call_to_raw"] > 0.3, result
