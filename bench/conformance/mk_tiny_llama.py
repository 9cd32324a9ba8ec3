#!/usr/bin/python3
"""bench/conformance/mk_tiny_llama.py - write a tiny random llama-arch GGUF.

Cross-check tool for the bench only (the project's own GGUF writer is in C).
Uses llama.cpp's pure-python gguf-py from the cached source tree and numpy
(Debian: apt-get install python3-numpy; run with /usr/bin/python3).

The tokenizer (all tokenizer.* keys) is copied from a llama.cpp vocab-only
GGUF, by default models/ggml-vocab-llama-spm.gguf (SPM, 32000 tokens).
Weights are random with a fixed seed, so the same arguments give the same
bytes.

Usage:
  /usr/bin/python3 bench/conformance/mk_tiny_llama.py OUT.gguf \
      [--src LLAMA_SRC] [--vocab VOCAB.gguf] [--seed 1234] [--layers 2] \
      [--dim 64] [--heads 4] [--kv-heads 2] [--ff 128] [--ctx 512] \
      [--f16] [--tied]
"""
import argparse
import os
import sys


def main() -> int:
    cache = os.environ.get("FLOTILLA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "flotilla"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--src", default=os.path.join(cache, "llama.cpp-src"), help="llama.cpp source tree")
    ap.add_argument("--vocab", default=None, help="vocab-only GGUF to copy tokenizer.* keys from")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ff", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--f16", action="store_true", help="store 2-D weights as F16 (norms stay F32)")
    ap.add_argument("--tied", action="store_true", help="no output.weight (tied to token_embd)")
    a = ap.parse_args()

    if a.dim % a.heads or a.heads % a.kv_heads or a.layers < 1 or a.dim < 8:
        print("mk_tiny_llama: error: need dim % heads == 0, heads % kv_heads == 0, layers >= 1", file=sys.stderr)
        return 1
    sys.path.insert(0, os.path.join(a.src, "gguf-py"))
    try:
        import numpy as np
        import gguf
    except ImportError as e:
        print(f"mk_tiny_llama: error: {e} (need /usr/bin/python3 with python3-numpy and --src)", file=sys.stderr)
        return 1

    vocab_path = a.vocab or os.path.join(a.src, "models", "ggml-vocab-llama-spm.gguf")
    rd = gguf.GGUFReader(vocab_path)
    tok_fields = [f for f in rd.fields.values() if f.name.startswith("tokenizer.")]
    tokens = rd.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        print(f"mk_tiny_llama: error: {vocab_path} has no tokenizer.ggml.tokens", file=sys.stderr)
        return 1
    n_vocab = len(tokens.data)

    rng = np.random.default_rng(a.seed)
    head_dim = a.dim // a.heads
    kv_dim = head_dim * a.kv_heads
    wtype = np.float16 if a.f16 else np.float32

    def lin(n_out: int, n_in: int) -> "np.ndarray":
        # numpy shape (rows=n_out, cols=n_in) == GGUF ne = [n_in, n_out]
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(wtype)

    def norm(n: int) -> "np.ndarray":
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("flotilla-tiny-llama")
    w.add_context_length(a.ctx)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ff)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_layer_norm_rms_eps(a.eps)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(a.rope_base)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if a.f16 else gguf.LlamaFileType.ALL_F32)
    for f in tok_fields:
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)

    w.add_tensor("token_embd.weight", (0.5 * rng.standard_normal((n_vocab, a.dim))).astype(wtype))
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(a.dim))
        w.add_tensor(p + "attn_q.weight", lin(a.dim, a.dim))
        w.add_tensor(p + "attn_k.weight", lin(kv_dim, a.dim))
        w.add_tensor(p + "attn_v.weight", lin(kv_dim, a.dim))
        w.add_tensor(p + "attn_output.weight", lin(a.dim, a.dim))
        w.add_tensor(p + "ffn_norm.weight", norm(a.dim))
        w.add_tensor(p + "ffn_gate.weight", lin(a.ff, a.dim))
        w.add_tensor(p + "ffn_up.weight", lin(a.ff, a.dim))
        w.add_tensor(p + "ffn_down.weight", lin(a.dim, a.ff))
    w.add_tensor("output_norm.weight", norm(a.dim))
    if not a.tied:
        w.add_tensor("output.weight", lin(n_vocab, a.dim))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
