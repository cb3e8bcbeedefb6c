#!/usr/bin/env bash
# Fuzzes the GGUF reader with libFuzzer under ASan + UBSan for a while (not part of CI).
#
#   scripts/fuzz.sh [SECONDS]     default 120
#
# The corpus starts from small valid files written by the test builder and is kept in
# build-fuzz/corpus between runs; crashes are written to build-fuzz/ as crash-*.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_TO_RUN="${1:-120}"
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is needed (apt-get install clang)" >&2; exit 1; }
cmake -S "$ROOT" -B "$ROOT/build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DHEARTH_CUDA=OFF -DHEARTH_FUZZ=ON \
  "-DHEARTH_SANITIZE=address;undefined" >/dev/null
cmake --build "$ROOT/build-fuzz" --target fuzz_gguf test_gguf
mkdir -p "$ROOT/build-fuzz/corpus"
# Seed: a small valid file with every value type and a few tensors.
python3 - "$ROOT/build-fuzz/corpus/seed-small.gguf" <<'PY'
import struct, sys
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = [
    s("general.architecture") + struct.pack("<I", 8) + s("llama"),
    s("llama.block_count") + struct.pack("<II", 4, 2),
    s("llama.rope.freq_base") + struct.pack("<If", 6, 10000.0),
    s("flag") + struct.pack("<IB", 7, 1),
    s("i64") + struct.pack("<Iq", 11, -5),
    s("tokens") + struct.pack("<IIQ", 9, 8, 3) + s("a") + s("b") + s("<s>"),
    s("scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<ff", 0.5, -1.0),
    s("nested") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 0, 2) + b"\x01\x02",
]
tensors = [("token_embd.weight", [32, 4], 2, 0), ("norm.weight", [32], 0, 96), ("w", [32, 2], 8, 256)]
out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
for name, dims, t, off in tensors:
    out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, off)
out += b"\0" * (-len(out) % 32) + bytes(range(256)) + bytes(68)
open(sys.argv[1], "wb").write(out)
PY
"$ROOT/build-fuzz/bin/test_gguf" --gtest_filter='GgufReader.*' >/dev/null  # sanity
cd "$ROOT/build-fuzz"
./bin/fuzz_gguf -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 corpus
