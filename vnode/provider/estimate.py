"""Memory a llama-server will need, from the model file alone.

Why: a pod that cannot fit the node's memory budget is refused *before* anything is loaded.
How: read the GGUF header (metadata + tensor table, never the weights) and apply llama.cpp's
KV-cache sizing rules plus a calibrated model of compute buffers and fixed overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from vnode.provider.subproc import communicate, python_child_env

if TYPE_CHECKING:  # the gguf package (and numpy) stay out of the long-running agent
    from gguf import GGUFReader

__all__ = [
    "CACHE_TYPE_BYTES",
    "ESTIMATOR_VERSION",
    "EstimateError",
    "MemoryEstimate",
    "estimate_file",
    "estimate_from_metadata",
    "estimate_in_subprocess",
    "main",
    "read_gguf",
    "sidecar_path",
]

log = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3

# Bump when the formula changes: sidecar caches written by another version are ignored.
ESTIMATOR_VERSION = 1

# Bytes per KV-cache element as (numerator, denominator): ggml block size / elements per block.
CACHE_TYPE_BYTES: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "iq4_nl": (18, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
}

# Interleaved sliding-window attention, as each architecture's loader sets it in llama.cpp
# (src/llama-model.cpp / src/models/*.cpp: `hparams.set_swa_pattern(period)`, i.e. layer il
# uses the window when il % period < period - 1). A GGUF `attention.sliding_window_pattern`
# key overrides the period (int) or gives the per-layer flags (bool array). Architectures
# not listed get a full-size cache on every layer: conservative (never underestimates).
_SWA_PERIOD: dict[str, int] = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma3n": 5,
    "gemma-embedding": 6,
    "cohere2": 4,
    "gpt-oss": 2,
    "llama4": 4,  # chunked attention, same cache sizing
}
# Windows llama.cpp assumes when the GGUF has no sliding_window key.
_SWA_DEFAULT_WINDOW: dict[str, int] = {"gemma2": 4096, "llama4": 8192}

# Calibration (see docs in estimate_from_metadata): per-ubatch-token f32 activations are
# 3*n_embd + 3*n_ff + n_head*head_dim_k + n_head_kv*head_dim_k (fitted on llama-server's own
# "compute buffer size" report: 18.25 MiB predicted vs 18.28 MiB measured at ubatch 128/512/1024).
_DEFAULT_UBATCH = 512
_OVERHEAD_FIXED = 48 * MiB  # runtime, HTTP server, threads, binary pages, heap
_OVERHEAD_PER_VOCAB_TOKEN = 64  # tokenizer tables: token text, scores, piece cache, tries

_DEFAULT_TIMEOUT = 60.0
_PARAM_NAMES = ("ctx_size", "parallel", "cache_type_k", "cache_type_v", "n_ubatch", "flash_attn", "swa_full", "kv_unified")


class EstimateError(Exception):
    """Why no estimate could be made.

    reason is one of ModelNotFound, InvalidModel (not a GGUF, truncated, missing header
    keys), InvalidArgument (e.g. an unknown cache type), Timeout, EstimateFailed (the
    helper process failed unexpectedly); message is for people (kubectl describe).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class MemoryEstimate(BaseModel):
    """Bytes a llama-server process will use for one model and one set of flags."""

    model_config = ConfigDict(frozen=True)

    weights_bytes: int  # tensor data (mmapped; resident once touched)
    kv_cache_bytes: int  # attention KV cache
    recurrent_bytes: int = 0  # recurrent state (Mamba/RWKV/hybrid layers), per slot
    compute_bytes: int  # compute buffers + logits output buffer
    overhead_bytes: int  # runtime, HTTP server, tokenizer
    total_bytes: int

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int  # the largest per-layer value when the GGUF gives an array
    n_embd: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int = 0
    n_swa: int = 0  # sliding window (0: none modelled)
    n_layer_swa: int = 0  # layers whose cache is only the window
    ctx_size: int  # total context llama-server allocates (after its padding/rounding)
    ctx_per_slot: int
    n_ctx_train: int
    parallel: int
    cache_type_k: str
    cache_type_v: str
    n_ubatch: int = _DEFAULT_UBATCH
    flash_attn: bool = True
    swa_full: bool = False
    kv_unified: bool = False

    def describe(self) -> str:
        slots = "slot" if self.parallel == 1 else "slots"
        cache = self.cache_type_k
        if self.cache_type_k != self.cache_type_v:
            cache = f"K {self.cache_type_k} / V {self.cache_type_v}"
        kv_note = f"ctx {self.ctx_per_slot} × {self.parallel} {slots}, {cache}"
        if self.n_layer_swa:
            kv_note += f", window {self.n_swa} on {self.n_layer_swa}/{self.n_layer} layers"
        parts = [f"weights {_human(self.weights_bytes)}", f"KV cache {_human(self.kv_cache_bytes)} ({kv_note})"]
        if self.recurrent_bytes:
            parts.append(f"recurrent state {_human(self.recurrent_bytes)}")
        parts.append(f"compute {_human(self.compute_bytes)}")
        parts.append(f"overhead {_human(self.overhead_bytes)}")
        return " + ".join(parts) + f" = {_human(self.total_bytes)}"


def _human(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# --------------------------------------------------------------------------- the formula


def _int(meta: dict[str, object], key: str, default: int | None = None) -> int | None:
    value = meta.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"GGUF key {key} should be a number, found {value!r}")
    return int(value)


def _per_layer(meta: dict[str, object], key: str, n_layer: int, default: int) -> list[int]:
    """An int-or-array hyperparameter as one value per layer (llama.cpp's get_key_or_arr)."""
    value = meta.get(key)
    if value is None:
        return [default] * n_layer
    if isinstance(value, list):
        if len(value) < n_layer:
            raise ValueError(f"GGUF key {key} has {len(value)} entries for {n_layer} layers")
        return [int(v) for v in value[:n_layer]]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"GGUF key {key} should be a number or an array, found {value!r}")
    return [int(value)] * n_layer


def _swa_layers(meta: dict[str, object], arch: str, n_layer: int) -> tuple[int, list[bool]]:
    """(window, per-layer flag) for the layers llama.cpp gives a window-sized KV cache."""
    window = _int(meta, f"{arch}.attention.sliding_window", _SWA_DEFAULT_WINDOW.get(arch, 0)) or 0
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if window <= 0:
        return 0, [False] * n_layer
    if isinstance(pattern, list):
        flags = [bool(v) for v in pattern[:n_layer]]
        return window, flags + [False] * (n_layer - len(flags))
    period = int(pattern) if isinstance(pattern, (int, float)) and not isinstance(pattern, bool) else _SWA_PERIOD.get(arch)
    if period is None or period == 1:
        return 0, [False] * n_layer  # unknown arch: assume full attention everywhere (conservative)
    return window, [period == 0 or il % period < period - 1 for il in range(n_layer)]


def _recurrent_state(meta: dict[str, object], arch: str, n_embd: int) -> tuple[str | None, int]:
    """(kind, f32 elements of state per recurrent layer per sequence), after llama_hparams::n_embd_r/s."""
    d_conv = _int(meta, f"{arch}.ssm.conv_kernel")
    d_state = _int(meta, f"{arch}.ssm.state_size")
    d_inner = _int(meta, f"{arch}.ssm.inner_size")
    if d_conv is not None or d_state is not None or d_inner is not None:
        d_conv, d_state, d_inner = d_conv or 0, d_state or 0, d_inner or 0
        n_group = _int(meta, f"{arch}.ssm.group_count", 0) or 0
        r = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
        return "ssm", r + d_state * d_inner
    head_size = _int(meta, f"{arch}.wkv.head_size")
    if head_size:
        shift = _int(meta, f"{arch}.token_shift_count", 2) or 2
        return "rwkv", shift * n_embd + n_embd * head_size
    l_cache = _int(meta, f"{arch}.shortconv.l_cache")
    if l_cache:
        return "shortconv", n_embd * max(l_cache - 1, 0)
    return None, 0


def _n_vocab(meta: dict[str, object], arch: str) -> int:
    value = _int(meta, f"{arch}.vocab_size")
    if value:
        return value
    tokens = meta.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list) else 0


def estimate_from_metadata(
    meta: dict[str, object],
    tensor_bytes: int,
    *,
    ctx_size: int | None,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_ubatch: int = _DEFAULT_UBATCH,
    flash_attn: bool = True,
    swa_full: bool = False,
    kv_unified: bool = False,
) -> MemoryEstimate:
    """Memory of `llama-server -c ctx_size -np parallel -ctk/-ctv ...` for a model, from its header.

    Pure: `meta` is the GGUF key/value metadata, `tensor_bytes` the size of all tensor data.
    Raises ValueError when the metadata lacks what llama.cpp itself needs, or on bad params.

    Context (llama.cpp's llama_context / llama_kv_cache[_iswa], verified against the server's
    own log): `-c` is the TOTAL context; 0/None means the model's training context. It is
    padded to 256; with `-np N` (and no --kv-unified, the server's choice when -np is explicit)
    it is split into N streams of pad(c/N, 256) cells each, so the KV cache does not grow with
    N for a fixed -c (each slot just gets less). With --kv-unified there is one stream of c.

    KV cache = sum over attention layers of
        streams × cells(layer) × n_head_kv(layer) × (head_dim_k × bytes(type_k) + head_dim_v × bytes(type_v)),
    where cells is the per-stream context, except for sliding-window layers (gemma2/3, cohere2,
    gpt-oss, llama4; or a GGUF sliding_window_pattern) which keep only
    pad(min(cells, window × (N if unified else 1) + n_ubatch), 256) cells unless --swa-full.
    Recurrent layers (Mamba/SSM, RWKV, LFM2 short-conv; hybrids by head_count_kv == 0 or
    full_attention_interval) keep f32 state per slot instead: (n_embd_r + n_embd_s) × 4 bytes.

    Compute = ubatch × 4 B × (3·n_embd + 3·n_ff + n_head·head_dim_k + n_head_kv·head_dim_k)
    (activations; n_ff is n_expert_used × expert_ff for MoE when larger) + the KQ mask
    (ubatch × cells × 2 B per cache, 4 B without flash attention) + without flash attention
    the KQ matrix (ubatch × cells × n_head × 4 B) + the logits output buffer (n_vocab × 4 B
    per slot). Overhead = 48 MiB + 64 B per vocabulary token.
    """
    if ctx_size is not None and ctx_size < 0:
        raise ValueError(f"ctx_size must be >= 0, got {ctx_size}")
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if n_ubatch < 1:
        raise ValueError(f"n_ubatch must be >= 1, got {n_ubatch}")
    for name, ctype in (("cache_type_k", cache_type_k), ("cache_type_v", cache_type_v)):
        if ctype not in CACHE_TYPE_BYTES:
            raise ValueError(f"{name} {ctype!r} is not one of {', '.join(CACHE_TYPE_BYTES)}")

    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ValueError("GGUF metadata has no general.architecture")
    n_layer = _int(meta, f"{arch}.block_count")
    n_embd = _int(meta, f"{arch}.embedding_length")
    if not n_layer or not n_embd:
        raise ValueError(f"GGUF metadata lacks {arch}.block_count or {arch}.embedding_length")
    n_ctx_train = _int(meta, f"{arch}.context_length", 0) or 0
    requested = ctx_size or n_ctx_train
    if requested <= 0:
        raise ValueError(f"GGUF metadata has no {arch}.context_length; give an explicit context size")

    heads = _per_layer(meta, f"{arch}.attention.head_count", n_layer, 0)
    kv_heads = _per_layer(meta, f"{arch}.attention.head_count_kv", n_layer, 0)
    if f"{arch}.attention.head_count_kv" not in meta:
        kv_heads = list(heads)
    n_head = max(heads)
    head_dim_k = _int(meta, f"{arch}.attention.key_length", n_embd // n_head if n_head else 0) or 0
    head_dim_v = _int(meta, f"{arch}.attention.value_length", n_embd // n_head if n_head else 0) or 0
    head_dim_k_swa = _int(meta, f"{arch}.attention.key_length_swa", head_dim_k) or 0
    head_dim_v_swa = _int(meta, f"{arch}.attention.value_length_swa", head_dim_v) or 0

    # which layers hold what
    kind, state_elems = _recurrent_state(meta, arch, n_embd)
    interval = _int(meta, f"{arch}.full_attention_interval", 0) or 0
    if kind is None:
        recurrent = [False] * n_layer
    elif kind == "rwkv":
        recurrent = [True] * n_layer
    elif interval:
        recurrent = [(il + 1) % interval != 0 for il in range(n_layer)]
    elif isinstance(meta.get(f"{arch}.attention.head_count_kv"), list):  # hybrids: head_count_kv 0 marks them
        recurrent = [kv == 0 for kv in kv_heads]
    else:  # pure recurrent (no attention heads), or parallel hybrids (falcon-h1) with both in every layer
        recurrent = [True] * n_layer
    attention = [kv > 0 and not (kind == "rwkv" or (interval and rec)) for kv, rec in zip(kv_heads, recurrent, strict=True)]
    n_swa, swa = _swa_layers(meta, arch, n_layer)
    swa = [s and a for s, a in zip(swa, attention, strict=True)]

    # context and streams, as llama_context does it
    n_ctx = _pad(requested, 256)
    if kv_unified:
        streams, cells = 1, n_ctx
    else:
        streams, cells = parallel, _pad(n_ctx // parallel, 256)
        n_ctx = cells * parallel
    swa_cells = cells if swa_full else _pad(min(cells, n_swa * (parallel if kv_unified else 1) + n_ubatch), 256)

    kn, kd = CACHE_TYPE_BYTES[cache_type_k]
    vn, vd = CACHE_TYPE_BYTES[cache_type_v]
    kv_bytes = 0
    for il in range(n_layer):
        if not attention[il]:
            continue
        hk, hv = (head_dim_k_swa, head_dim_v_swa) if swa[il] else (head_dim_k, head_dim_v)
        layer_cells = streams * (swa_cells if swa[il] else cells)
        kv_bytes += layer_cells * kv_heads[il] * (hk * kn // kd + hv * vn // vd)
    recurrent_bytes = sum(recurrent) * parallel * state_elems * 4

    # compute buffers (see module constants for the calibration)
    n_ff = max(_per_layer(meta, f"{arch}.feed_forward_length", n_layer, 0))
    n_expert_used = _int(meta, f"{arch}.expert_used_count", 0) or 0
    n_ff_exp = _int(meta, f"{arch}.expert_feed_forward_length", 0) or 0
    n_ff_shexp = _int(meta, f"{arch}.expert_shared_feed_forward_length", 0) or 0
    n_ff_eff = max(n_ff, n_expert_used * n_ff_exp + n_ff_shexp) or 4 * n_embd
    n_head_kv = max(kv_heads)
    activations = n_ubatch * 4 * (3 * n_embd + 3 * n_ff_eff + n_head * head_dim_k + n_head_kv * head_dim_k)
    has_full = any(a and not s for a, s in zip(attention, swa, strict=True))
    mask_cells = (cells if has_full else 0) + (swa_cells if any(swa) else 0)
    compute = activations + n_ubatch * mask_cells * (2 if flash_attn else 4)
    if not flash_attn and any(attention):
        compute += n_ubatch * cells * n_head * 4
    n_vocab = _n_vocab(meta, arch)
    compute += n_vocab * 4 * parallel
    overhead = _OVERHEAD_FIXED + _OVERHEAD_PER_VOCAB_TOKEN * n_vocab

    total = tensor_bytes + kv_bytes + recurrent_bytes + compute + overhead
    return MemoryEstimate(
        weights_bytes=tensor_bytes, kv_cache_bytes=kv_bytes, recurrent_bytes=recurrent_bytes,
        compute_bytes=compute, overhead_bytes=overhead, total_bytes=total,
        architecture=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_embd=n_embd,
        head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_vocab=n_vocab,
        n_swa=n_swa if any(swa) else 0, n_layer_swa=sum(swa),
        ctx_size=n_ctx, ctx_per_slot=cells if not kv_unified else n_ctx, n_ctx_train=n_ctx_train,
        parallel=parallel, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
        n_ubatch=n_ubatch, flash_attn=flash_attn, swa_full=swa_full, kv_unified=kv_unified,
    )


# --------------------------------------------------------------------------- reading GGUF


def _fast_reader_class() -> type[GGUFReader]:
    """GGUFReader with a fast path for arrays.

    The stock reader makes several numpy views per array element: a 262k-token vocabulary
    took 17 s and 745 MiB here. This keeps the same ReaderField layout (so `contents()`
    works unchanged) with one view per numeric array and a struct-based walk over strings.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class _FastGGUFReader(GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[Any], list[int], list[GGUFValueType]]:
            if raw_type != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            if len(itype) != 1 or len(alen) != 1:
                raise ValueError("array header runs past the end of the file")
            count, sub = int(alen[0]), GGUFValueType(int(itype[0]))
            offs = orig_offs + 12
            nptype = self.gguf_scalar_to_np.get(sub)
            if nptype is not None:
                values = self._get(offs, nptype, count)
                if len(values) != count:
                    raise ValueError("array runs past the end of the file")
                return 12 + int(values.nbytes), [itype, alen, values], [2], [GGUFValueType.ARRAY, sub]
            if sub != GGUFValueType.STRING:
                return super()._get_field_parts(orig_offs, raw_type)  # nested arrays: rare, keep stock path
            little = (sys.byteorder == "little") == (self.byte_order == "I")
            unpack = struct.Struct("<Q" if little else ">Q").unpack_from
            data, size = self.data, len(self.data)
            parts: list[Any] = [itype, alen]
            idxs: list[int] = []
            for _ in range(count):
                if offs + 8 > size:
                    raise ValueError("string array runs past the end of the file")
                (slen,) = unpack(data, offs)
                if offs + 8 + slen > size:
                    raise ValueError("string array runs past the end of the file")
                parts.append(data[offs + 8 : offs + 8 + slen])
                idxs.append(len(parts) - 1)
                offs += 8 + slen
            return offs - orig_offs, parts, idxs, [GGUFValueType.ARRAY, GGUFValueType.STRING]

    return _FastGGUFReader


def _header_reader_class() -> type[GGUFReader]:
    """The fast reader for the front of a file: metadata and tensor infos, no tensor data
    (which a header fetched with a Range request does not have)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.gguf_reader import ReaderTensor

    class _HeaderReader(_fast_reader_class()):  # type: ignore[misc]
        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            tensors = []
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset_tensor = field.parts
                ggml_type = GGMLQuantizationType(raw_dtype[0])
                n_elems = int(np.prod(dims))
                block_size, type_size = GGML_QUANT_SIZES[ggml_type]
                tensors.append(ReaderTensor(
                    name=str(bytes(name_data), encoding="utf-8"), tensor_type=ggml_type, shape=dims, n_elements=n_elems,
                    n_bytes=n_elems * type_size // block_size, data_offset=int(start_offs + offset_tensor[0]),
                    data=np.empty(0, dtype=np.uint8), field=field))
            self.tensors = tensors

    return _HeaderReader


def read_gguf_header(path: Path) -> tuple[dict[str, object], int]:
    """(metadata, tensor bytes of this file) from the front of a GGUF file, as a Range request
    fetches it. Raises EstimateError("HeaderIncomplete") when the prefix ends inside the
    header (fetch more), InvalidModel when it is not GGUF."""
    try:
        return _read(Path(path), _header_reader_class(), header_only=True)
    except _Truncated as exc:
        raise EstimateError("HeaderIncomplete", str(exc)) from None


class _Truncated(Exception):
    """The header runs past the end of the bytes at hand."""


def _plain(value: Any) -> object:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _open(path: Path, reader_cls: type[GGUFReader], *, header_only: bool = False) -> GGUFReader:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise EstimateError("ModelNotFound", f"model file {path} does not exist") from None
    except OSError as exc:
        raise EstimateError("InvalidModel", f"model file {path} cannot be read: {exc.strerror or exc}") from None
    if path.is_dir():
        raise EstimateError("InvalidModel", f"{path} is a directory, not a GGUF model file")
    if size == 0:
        raise EstimateError("InvalidModel", f"{path} is empty (0 bytes), not a GGUF model file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise EstimateError("InvalidModel", f"model file {path} cannot be read: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise EstimateError(
            "InvalidModel",
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); "
            "llama-server needs a .gguf file",
        )
    try:
        reader = reader_cls(path, "r")
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        if header_only:
            raise _Truncated(f"{path} ({size} bytes) ends inside the GGUF header: {exc}") from None
        raise EstimateError(
            "InvalidModel",
            f"{path} is a truncated or corrupt GGUF file ({size} bytes; its header could not be read: {exc}); "
            "was the download interrupted?",
        ) from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=int(reader.data_offset))
    if end > size and not header_only:
        raise EstimateError(
            "InvalidModel",
            f"{path} is truncated: it has {size} bytes but its tensors need {end}; was the download interrupted?",
        )
    return reader


def read_gguf(path: Path) -> tuple[dict[str, object], int]:
    """(metadata, tensor data bytes) of a GGUF file; reads the header only.

    Metadata values are plain Python: str, int, float, bool, or lists of those. For a split
    model (`-00001-of-0000N.gguf`) pass the first shard: tensor bytes are summed over all.
    Raises EstimateError (ModelNotFound, InvalidModel) with a plain-words message.
    """
    return _read(Path(path), _fast_reader_class())


def _read(path: Path, reader_cls: type[GGUFReader], *, header_only: bool = False) -> tuple[dict[str, object], int]:
    reader = _open(path, reader_cls, header_only=header_only)
    meta: dict[str, object] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's pseudo-fields (version, counts), not file metadata
        try:
            meta[name] = _plain(field.contents())
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            raise EstimateError("InvalidModel", f"{path} has an unreadable metadata value {name}: {exc}") from None
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)

    split_count = meta.get("split.count")
    if isinstance(split_count, int) and split_count > 1 and not header_only:
        m = _SPLIT_RE.match(path.name)
        if m is None:
            raise EstimateError(
                "InvalidModel",
                f"{path} is one shard of a {split_count}-part model but is not named <name>-00001-of-{split_count:05d}.gguf",
            )
        for no in range(1, split_count + 1):
            shard = path.with_name(f"{m['prefix']}-{no:05d}-of-{split_count:05d}.gguf")
            if shard.name == path.name:
                continue
            if not shard.exists():
                raise EstimateError("InvalidModel", f"shard {shard.name} of the {split_count}-part model is missing")
            tensor_bytes += sum(int(t.n_bytes) for t in _open(shard, reader_cls).tensors)
    return meta, tensor_bytes


def estimate_file(path: Path, *, model_bytes: int | None = None, **params: Any) -> MemoryEstimate:
    """read_gguf + estimate_from_metadata. Params as estimate_from_metadata (ctx_size defaults to None).

    With `model_bytes`, `path` is only the front of the model (its header, fetched before the
    download) and the weights are taken to be the model's file sizes: a little more than the
    tensors, as the headers count too."""
    if model_bytes is None:
        meta, tensor_bytes = read_gguf(Path(path))
    else:
        meta, _ = read_gguf_header(Path(path))
        tensor_bytes = model_bytes
    params.setdefault("ctx_size", None)
    try:
        return estimate_from_metadata(meta, tensor_bytes, **params)
    except ValueError as exc:
        raise EstimateError("InvalidModel", f"{Path(path).name}: {exc}") from None


# --------------------------------------------------------------------------- agent side


def sidecar_path(path: Path) -> Path:
    """Where estimates for a model file are cached: `<path>.estimate.json`."""
    return path.with_name(path.name + ".estimate.json")


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(_PARAM_NAMES)
    if unknown:
        raise TypeError(f"unknown estimate parameters: {', '.join(sorted(unknown))}")
    resolved: dict[str, Any] = {
        "ctx_size": params.get("ctx_size") or None, "parallel": int(params.get("parallel", 1)),
        "cache_type_k": params.get("cache_type_k", "f16"), "cache_type_v": params.get("cache_type_v", "f16"),
        "n_ubatch": int(params.get("n_ubatch", _DEFAULT_UBATCH)), "flash_attn": bool(params.get("flash_attn", True)),
        "swa_full": bool(params.get("swa_full", False)), "kv_unified": bool(params.get("kv_unified", False)),
    }
    for name in ("cache_type_k", "cache_type_v"):
        if resolved[name] not in CACHE_TYPE_BYTES:
            raise EstimateError("InvalidArgument", f"{name} {resolved[name]!r} is not one of {', '.join(CACHE_TYPE_BYTES)}")
    if resolved["parallel"] < 1 or (resolved["ctx_size"] or 0) < 0 or resolved["n_ubatch"] < 1:
        raise EstimateError("InvalidArgument", f"invalid parallel/ctx_size/n_ubatch: {resolved}")
    return resolved


def _same_file(data: dict[str, Any], stat: os.stat_result) -> bool:
    """A sidecar applies while the model file (size, mtime_ns) and the formula version are unchanged."""
    return (data.get("version"), data.get("size"), data.get("mtime_ns")) == (ESTIMATOR_VERSION, stat.st_size, stat.st_mtime_ns)


def _cache_read(path: Path, stat: os.stat_result, key: str) -> MemoryEstimate | None:
    try:
        data = json.loads(sidecar_path(path).read_text())
        if not _same_file(data, stat):
            return None
        entry = data.get("entries", {}).get(key)
        return MemoryEstimate.model_validate(entry) if entry is not None else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _cache_write(path: Path, stat: os.stat_result, key: str, estimate: MemoryEstimate) -> None:
    sidecar = sidecar_path(path)
    entries: dict[str, object] = {}
    try:
        old = json.loads(sidecar.read_text())
        if _same_file(old, stat):
            entries = dict(old.get("entries", {}))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    entries[key] = estimate.model_dump()
    data = {"version": ESTIMATOR_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "entries": entries}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{sidecar.name}.", dir=sidecar.parent)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, sidecar)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:  # read-only store: estimate again next time, no harm
        log.debug("cannot write estimate cache %s: %s", sidecar, exc)


def _cli_args(path: Path, params: dict[str, Any]) -> list[str]:
    args = [str(path), "--parallel", str(params["parallel"]), "--cache-type-k", params["cache_type_k"],
            "--cache-type-v", params["cache_type_v"], "--ubatch-size", str(params["n_ubatch"]),
            "--flash-attn", "on" if params["flash_attn"] else "off"]
    if params["ctx_size"]:
        args += ["--ctx-size", str(params["ctx_size"])]
    if params["swa_full"]:
        args.append("--swa-full")
    if params["kv_unified"]:
        args.append("--kv-unified")
    return args


async def estimate_in_subprocess(
    path: Path, *, python: str = sys.executable, timeout: float = _DEFAULT_TIMEOUT, use_cache: bool = True,
    model_bytes: int | None = None, **params: Any
) -> MemoryEstimate:
    """Estimate in a child `python -m vnode.provider.estimate` (gguf/numpy stay out of the agent).

    Results are cached next to the model as `<path>.estimate.json`, keyed by the file's size
    and mtime_ns and by the parameters, so the child runs once per model and parameters.
    Raises EstimateError (ModelNotFound, InvalidModel, InvalidArgument, Timeout, EstimateFailed).
    With `model_bytes`, `path` is the model's header only (estimate_file).
    """
    path = Path(path)
    resolved = _check_params(params)
    extra = ["--model-bytes", str(model_bytes)] if model_bytes is not None else []
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise EstimateError("ModelNotFound", f"model file {path} does not exist") from None
    except OSError as exc:
        raise EstimateError("InvalidModel", f"model file {path} cannot be read: {exc.strerror or exc}") from None
    key = json.dumps({**resolved, "model_bytes": model_bytes} if model_bytes is not None else resolved, sort_keys=True)
    if not use_cache:
        return await _estimate_child(path, resolved, extra, python=python, timeout=timeout)
    cached = _cache_read(path, stat, key)
    if cached is not None:
        return cached
    # Pods that arrive together (a Deployment scaled to 100 on one node) ask for the same
    # estimate at once: one child answers them all, instead of one Python process each.
    flight = (str(path), stat.st_size, stat.st_mtime_ns, key, python)
    task = _in_flight.get(flight)
    if task is None:
        task = asyncio.ensure_future(_estimate_child(path, resolved, extra, python=python, timeout=timeout))
        _in_flight[flight] = task

        def landed(t: asyncio.Future, flight: tuple = flight) -> None:
            if _in_flight.get(flight) is t:
                del _in_flight[flight]
            if not t.cancelled() and t.exception() is None:  # the exception goes to the callers awaiting it
                _cache_write(path, stat, key, t.result())

        task.add_done_callback(landed)
    # shield: one caller cancelled (its pod deleted) does not cancel the others' estimate
    return await asyncio.shield(task)


_in_flight: dict[tuple, asyncio.Future] = {}  # estimates being made, shared by their callers


async def _estimate_child(path: Path, resolved: dict[str, Any], extra: list[str], *, python: str, timeout: float) -> MemoryEstimate:
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "vnode.provider.estimate", *_cli_args(path, resolved), *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=python_child_env(dict(os.environ)),
    )
    try:
        stdout, stderr = await communicate(proc, timeout)
    except TimeoutError:
        raise EstimateError("Timeout", f"reading the header of {path.name} took longer than {timeout:.0f}s") from None

    try:
        result = json.loads(stdout.decode() or "null")
    except ValueError:
        result = None
    if isinstance(result, dict) and "error" in result:
        error = result["error"]
        raise EstimateError(str(error.get("reason", "EstimateFailed")), str(error.get("message", "")))
    if proc.returncode != 0 or not isinstance(result, dict):
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise EstimateError(
            "EstimateFailed",
            f"the estimate helper for {path.name} exited with {proc.returncode}: {' | '.join(tail) or 'no output'}",
        )
    return MemoryEstimate.model_validate(result)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vnode.provider.estimate",
        description="Print the memory a llama-server would need for a GGUF model, as JSON.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--ctx-size", "-c", type=int, default=None, help="total context (-c); 0 or absent: the model's")
    parser.add_argument("--parallel", "-np", type=int, default=1, help="server slots (-np)")
    parser.add_argument("--cache-type-k", "-ctk", default="f16", choices=sorted(CACHE_TYPE_BYTES))
    parser.add_argument("--cache-type-v", "-ctv", default="f16", choices=sorted(CACHE_TYPE_BYTES))
    parser.add_argument("--ubatch-size", "-ub", type=int, default=_DEFAULT_UBATCH)
    parser.add_argument("--flash-attn", "-fa", choices=("on", "off", "auto"), default="auto", help="auto counts as on")
    parser.add_argument("--swa-full", action="store_true")
    parser.add_argument("--kv-unified", action="store_true")
    parser.add_argument("--model-bytes", type=int, default=None,
                        help="PATH is only the model's header (fetched with a Range request); the files total this many bytes")
    args = parser.parse_args(argv)
    try:
        estimate = estimate_file(
            args.path, model_bytes=args.model_bytes, ctx_size=args.ctx_size or None, parallel=args.parallel,
            cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v, n_ubatch=args.ubatch_size,
            flash_attn=args.flash_attn != "off", swa_full=args.swa_full, kv_unified=args.kv_unified,
        )
    except EstimateError as exc:
        print(json.dumps({"error": {"reason": exc.reason, "message": exc.message}}))
        print(f"{exc.reason}: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(estimate.model_dump()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
