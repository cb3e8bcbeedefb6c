#!/usr/bin/env python3
"""Write tests/fixtures/arch/<name>.{gguf,json}: tiny random models of each architecture path of
hearth's forward pass, and llama.cpp's logits for them, the oracle of
tests/engine/test_architectures.cpp.

Usage:  python3 scripts/reference/make_arch_fixtures.py
Needs:  pip install gguf numpy llama-cpp-python

Each model has 2 layers, n_embd 64, n_ff 64 (not larger: each file stays under 300 KB, as it is
committed) and a 32-token gpt2-style vocabulary. Weights are F32, so neither side quantizes
activations and the two implementations should agree to rounding; the one exception is a Q8_0
ffn_down in llama-linear-tiny, which exercises the quantized matmul path on both sides. Norm
weights are near 1 and the rest ~N(0, 0.1), so the logits are far from degenerate. The weights
come from a fixed seed: rerunning rewrites the same files.

Per model the JSON holds the token ids (fed without BOS, in one batch), llama.cpp's logits at
every position over the whole vocabulary (6 significant digits), and llama.cpp's greedy
continuation of N_GREEDY tokens (each fed back one at a time through the KV cache).
"""
import json
from pathlib import Path

import gguf
import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/arch"
N_GREEDY = 8
IDS = [5, 17, 3, 9, 28, 12, 3, 22, 7, 30, 14, 19]

# token 0 = BOS, 1 = EOS (control); then newline, space, a-z, "ab", "." (byte-level gpt2 text).
TOKENS = ["<|bos|>", "<|eos|>", "\u010a", "\u0120"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["ab", "."]
TOKEN_TYPES = [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(TOKENS) - 2)
MERGES = ["a b"]  # llama.cpp requires the key; one merge is enough

BASE = dict(n_embd=64, n_ff=64, n_layer=2, n_head=4, n_head_kv=4, key_length=None, qkv_bias=False, qk_norm=False,
            rope_freqs=None, linear_factor=None, tied=False, q8_ffn_down=False, rope_base=10000.0)
MODELS = {
    # Qwen 2: q/k/v biases, NEOX rope, GQA, tied output head.
    "qwen2-tiny": dict(arch="qwen2", n_head_kv=2, qkv_bias=True, tied=True, rope_base=1000000.0),
    # Qwen 3: per-head RMS QK-norm, head_dim 32 != n_embd / n_head = 16, GQA 4:1, tied output.
    "qwen3-tiny": dict(arch="qwen3", n_head_kv=1, key_length=32, qk_norm=True, tied=True, rope_base=1000000.0),
    # Llama 3.1-style rope frequency factors (one per rotated pair, all != 1), GQA 2:1.
    "llama-ropefreqs-tiny": dict(arch="llama", n_head_kv=2, rope_base=500000.0,
                                 rope_freqs=np.linspace(1.25, 8.0, 8, dtype=np.float32)),
    # Linear rope scaling, factor 2 (freq_scale 0.5); a Q8_0 ffn_down.
    "llama-linear-tiny": dict(arch="llama", linear_factor=2.0, q8_ffn_down=True),
}


def write_model(path: Path, name: str, spec: dict, seed: int) -> None:
    s = {**BASE, **spec}
    rng = np.random.default_rng(seed)
    arch, e, ff = s["arch"], s["n_embd"], s["n_ff"]
    hd = s["key_length"] or e // s["n_head"]
    q_dim, kv_dim, vocab = s["n_head"] * hd, s["n_head_kv"] * hd, len(TOKENS)

    def mat(rows: int, cols: int) -> np.ndarray:  # numpy [rows, cols] = GGUF ne [cols, rows]
        return rng.normal(0.0, 0.1, size=(rows, cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, size=n)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(e)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    if s["key_length"]:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(s["rope_base"])
    w.add_rope_dimension_count(hd)
    if s["linear_factor"]:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s["linear_factor"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([int(t) for t in TOKEN_TYPES])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)

    w.add_tensor("token_embd.weight", mat(vocab, e))
    if s["rope_freqs"] is not None:
        assert s["rope_freqs"].size == hd // 2
        w.add_tensor("rope_freqs.weight", s["rope_freqs"])
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm(e))
        w.add_tensor(p + "attn_q.weight", mat(q_dim, e))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, e))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, e))
        if s["qkv_bias"]:
            w.add_tensor(p + "attn_q.bias", rng.normal(0.0, 0.1, size=q_dim).astype(np.float32))
            w.add_tensor(p + "attn_k.bias", rng.normal(0.0, 0.1, size=kv_dim).astype(np.float32))
            w.add_tensor(p + "attn_v.bias", rng.normal(0.0, 0.1, size=kv_dim).astype(np.float32))
        if s["qk_norm"]:
            w.add_tensor(p + "attn_q_norm.weight", norm(hd))
            w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        w.add_tensor(p + "attn_output.weight", mat(e, q_dim))
        w.add_tensor(p + "ffn_norm.weight", norm(e))
        w.add_tensor(p + "ffn_gate.weight", mat(ff, e))
        w.add_tensor(p + "ffn_up.weight", mat(ff, e))
        down = mat(e, ff)
        if s["q8_ffn_down"]:
            q8 = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(p + "ffn_down.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(p + "ffn_down.weight", down)
    w.add_tensor("output_norm.weight", norm(e))
    if not s["tied"]:
        w.add_tensor("output.weight", mat(vocab, e))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def reference(path: Path) -> dict:
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, n_threads=1, verbose=False)
    llm.eval(IDS)
    logits = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    greedy = []
    last = logits[-1]
    for _ in range(N_GREEDY):
        tok = int(np.argmax(last))
        greedy.append(tok)
        llm.eval([tok])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return {"ids": IDS, "n_vocab": int(logits.shape[1]),
            "logits": [[sig6(v) for v in row] for row in logits], "greedy": greedy}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, spec) in enumerate(MODELS.items()):
        path = OUT / f"{name}.gguf"
        write_model(path, name, spec, seed)
        ref = {"file": path.name, **reference(path)}
        (OUT / f"{name}.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
        print(f"{name}: {path.stat().st_size} bytes, greedy {ref['greedy']}")


if __name__ == "__main__":
    main()
