"""The generated tiny model is a complete llama GGUF: the estimator reads it like a real one
(that llama-server loads and serves it is shown in tests/e2e/test_portable_binary.py)."""

from gguf import GGMLQuantizationType, GGUFReader

from vnode.provider.estimate import estimate_file
from vnode.provider.tinymodel import TinyModel, write_tiny_model


def test_tiny_model_has_what_llama_cpp_needs(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf")
    reader = GGUFReader(str(path))
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and "<0x41>" in tokens  # byte fallback: any text tokenizes
    names = {t.name: t for t in reader.tensors}
    assert names["blk.1.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert {"token_embd.weight", "output_norm.weight", "output.weight"} <= set(names)
    assert path.stat().st_size < 1_000_000


def test_seeded_weights_are_reproducible(tmp_path):
    a = write_tiny_model(tmp_path / "a.gguf").read_bytes()
    b = write_tiny_model(tmp_path / "b.gguf").read_bytes()
    c = write_tiny_model(tmp_path / "c.gguf", TinyModel(seed=1)).read_bytes()
    assert a == b and a != c


def test_estimator_on_the_tiny_model(tmp_path):
    shape = TinyModel()
    est = estimate_file(write_tiny_model(tmp_path / "tiny.gguf", shape), ctx_size=512)
    assert (est.architecture, est.n_layer, est.n_head, est.n_head_kv, est.n_embd) == ("llama", 2, 4, 2, 64)
    head_dim = shape.embedding // shape.heads
    assert est.kv_cache_bytes == shape.layers * 512 * shape.kv_heads * head_dim * 2 * 2  # K and V, f16
    assert est.weights_bytes < 200_000
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.compute_bytes + est.overhead_bytes
