#!/usr/bin/env python3
"""Write the quantization fixtures in tests/fixtures/quants/ with the `gguf` package's
independent (numpy) dequantizers and quantizers.

Usage:  python3 scripts/reference/make_quant_fixtures.py [OUT_DIR]
Needs:  pip install -r scripts/reference/requirements.txt

File format (little-endian), one file per case:
  dequant_<TYPE>.bin : b"HQF1", u32 ggml type id, u32 n_elements, u32 n_bytes,
                       n_bytes of raw blocks, n_elements f32 (gguf's dequantization)
  quant_<TYPE>.bin   : b"HQF1", u32 ggml type id, u32 n_elements, u32 n_bytes,
                       n_elements f32 input, n_bytes of blocks (gguf's quantization)
plus sizes.json: {type name: [block size, bytes per block]} from gguf.GGML_QUANT_SIZES.
"""
import importlib.metadata
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests/fixtures/quants"
rng = np.random.default_rng(20261124)


def f16_bytes(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_scales(n):
    """Plausible f16 scales: mostly small normal values of both signs, plus zero, a subnormal
    and a large one, so every block exercises a different d / dmin."""
    s = rng.normal(0.0, 0.05, n).astype(np.float32)
    special = np.array([0.0, 6.0e-8, -3.0e-5, 1.5, -0.75, 1.0e-3], dtype=np.float32)
    s[: min(n, len(special))] = special[: min(n, len(special))]
    return s


# Byte offsets of the f16 fields inside each block: these get sane scales, every other byte
# is uniformly random (all bit patterns of the quant values and packed scales).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(qtype, n_blocks):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off:off + 2] = f16_bytes(random_scales(n_blocks))
    return blocks, n_blocks * block_size


def finite_16bit_patterns(n, exponent_mask, mantissa_bits):
    """Random 16-bit float patterns (f16 or bf16) that are not NaN; includes +-0, +-inf,
    subnormals and the extremes."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    nan = ((bits & exponent_mask) == exponent_mask) & ((bits & ((1 << mantissa_bits) - 1)) != 0)
    bits[nan] &= np.uint16(~exponent_mask & 0xFFFF)  # NaN -> same mantissa with exponent 0 (subnormal)
    inf = exponent_mask
    specials = [0x0000, 0x8000, inf, inf | 0x8000, 0x0001, 0x8001, (1 << mantissa_bits) - 1,
                inf - 1, (inf - 1) | 0x8000, 1 << mantissa_bits]
    bits[: len(specials)] = np.array(specials, dtype=np.uint16)
    return bits


def write(path, qtype, n_elements, first: bytes, second: bytes, n_bytes):
    with open(path, "wb") as f:
        f.write(b"HQF1")
        f.write(struct.pack("<III", int(qtype), n_elements, n_bytes))
        f.write(first)
        f.write(second)


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    # Dequantization of random blocks.
    for qtype, n_blocks in [(T.Q4_0, 48), (T.Q4_1, 48), (T.Q5_0, 48), (T.Q5_1, 48), (T.Q8_0, 48),
                            (T.Q2_K, 6), (T.Q3_K, 6), (T.Q4_K, 6), (T.Q5_K, 6), (T.Q6_K, 6)]:
        blocks, n = random_blocks(qtype, n_blocks)
        y = dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert y.size == n
        raw = blocks.tobytes()
        write(OUT / f"dequant_{qtype.name}.bin", qtype, n, raw, y.tobytes(), len(raw))

    f16 = finite_16bit_patterns(1536, 0x7C00, 10)
    y = dequantize(f16.view(np.uint8), T.F16).astype(np.float32).reshape(-1)
    write(OUT / "dequant_F16.bin", T.F16, f16.size, f16.tobytes(), y.tobytes(), f16.nbytes)
    bf16 = finite_16bit_patterns(1536, 0x7F80, 7)
    y = dequantize(bf16.view(np.uint8), T.BF16).astype(np.float32).reshape(-1)
    write(OUT / "dequant_BF16.bin", T.BF16, bf16.size, bf16.tobytes(), y.tobytes(), bf16.nbytes)
    f32 = rng.normal(0, 1, 256).astype(np.float32)
    write(OUT / "dequant_F32.bin", T.F32, f32.size, f32.tobytes(), f32.tobytes(), f32.nbytes)

    # Quantization of random rows: several magnitudes, a zero block, a constant block,
    # values exactly on rounding ties.
    n = 32 * 40
    x = rng.normal(0, 1, n).astype(np.float32)
    x[0:32] *= 1e-3
    x[32:64] *= 50.0
    x[64:96] = 0.0
    x[96:128] = 0.25
    x[128:160] = (np.arange(32, dtype=np.float32) - 16.0) * 0.5
    x[160:192] = np.abs(x[160:192])
    x[192:224] = -np.abs(x[192:224])
    x[224:256] = rng.uniform(-1e-6, 1e-6, 32).astype(np.float32)
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16]:
        q = quantize(x.reshape(1, -1), qtype).reshape(-1).view(np.uint8)
        raw = q.tobytes()
        write(OUT / f"quant_{qtype.name}.bin", qtype, n, x.tobytes(), raw, len(raw))

    sizes = {t.name: list(v) for t, v in gguf.GGML_QUANT_SIZES.items()}
    sizes = {name: sizes[name] for name in sorted(sizes, key=lambda k: int(T[k]))}
    (OUT / "sizes.json").write_text(json.dumps({"gguf_version": importlib.metadata.version("gguf"),
                                                "ids": {k: int(T[k]) for k in sizes}, "sizes": sizes}, indent=1) + "\n")
    print(f"wrote fixtures to {OUT}")


if __name__ == "__main__":
    main()
