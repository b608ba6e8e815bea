"""A tiny but complete llama-architecture GGUF, written with the `gguf` package.

It exists so that a llama-server binary can be proven (load a model, generate a token)
anywhere, in about a second, without shipping or downloading a real model: the weights
are seeded random numbers (its answers are noise), but the file is everything llama.cpp
needs — hyperparameters, a SentencePiece vocabulary with byte fallback, and quantized
(Q8_0) weight matrices, so the SIMD kernels a CPU variant was compiled with really run.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import quantize


@dataclass(frozen=True)
class TinyModel:
    """Shape of the generated model; the defaults keep a server well under 50 MB RSS."""

    layers: int = 2
    embedding: int = 64
    feed_forward: int = 128
    heads: int = 4
    kv_heads: int = 2
    context: int = 512
    seed: int = 0


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, the 256 byte tokens (so any text tokenizes), then some pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = ["\u2581"] + list(string.ascii_lowercase) + [f"\u2581{c}" for c in string.ascii_lowercase]
    pieces += ["\u2581the", "\u2581is", "\u2581of", "\u2581capital", "\u2581France", "\u2581Paris", "."]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: Path, shape: TinyModel = TinyModel()) -> Path:
    """Write the model to `path` (overwritten) and return it."""
    tokens, scores, types = _vocabulary()
    n_vocab, n_embd, n_ff = len(tokens), shape.embedding, shape.feed_forward
    head_dim = n_embd // shape.heads
    rng = np.random.default_rng(shape.seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), "llama")
    w.add_name("vnode tiny model (random weights)")
    w.add_block_count(shape.layers)
    w.add_context_length(shape.context)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(GGMLQuantizationType.Q8_0))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def q8(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, quantize(matrix(rows, cols), GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(n_embd, dtype=np.float32))

    q8("token_embd.weight", n_vocab, n_embd)
    for i in range(shape.layers):
        norm(f"blk.{i}.attn_norm.weight")
        q8(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        q8(f"blk.{i}.attn_k.weight", shape.kv_heads * head_dim, n_embd)
        q8(f"blk.{i}.attn_v.weight", shape.kv_heads * head_dim, n_embd)
        q8(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        norm(f"blk.{i}.ffn_norm.weight")
        q8(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        q8(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        q8(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    norm("output_norm.weight")
    q8("output.weight", n_vocab, n_embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
