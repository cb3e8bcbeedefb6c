// A fixed CPU-kernel workload for counting instructions (bench/arm-insn-count.sh runs it under
// qemu with an instruction-counting plugin): the seven matmuls of one transformer layer of a
// given shape through CpuBackend::matmul at one thread (activation quantization, packed or
// native-row kernels, exactly the path a model's layer takes), `reps` times over `n` tokens.
// Setup (weights, packing) is the same whatever `reps` is, so the difference between two
// counts with different `reps` is the instructions of (reps2 - reps1) layer passes.
//
//   insn_workload TYPE N REPS [pack|native] [SHAPE]
//   TYPE   q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K
//   SHAPE  smollm2 (576 hidden, 192 kv, 1536 ffn; default) or llama-1b (2048, 512, 8192)
// Weights are random bytes with sane f16 scales (the instruction count of these kernels does
// not depend on the values); the level is cpu_level() (HEARTH_CPU_LEVEL forces a lower one).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"

using namespace hearth;
using namespace hearth::kernels;

namespace {

struct Matrix {
  int64_t k, m;  // [m rows of k]
};

// The byte offsets of the f16 scales in a block of `type`, which random bytes must not fill
// with NaN or infinities.
std::vector<size_t> scale_offsets(DType type) {
  switch (type) {
    case DType::Q4_0: case DType::Q5_0: case DType::Q8_0: return {0};
    case DType::Q4_1: case DType::Q5_1: return {0, 2};
    case DType::Q2_K: return {80, 82};      // d, dmin after scales[16], qs[64]
    case DType::Q3_K: return {108};         // d after hmask[32], qs[64], scales[12]
    case DType::Q4_K: case DType::Q5_K: return {0, 2};
    case DType::Q6_K: return {208};         // d after ql[128], qh[64], scales[16]
    default: return {};
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: insn_workload TYPE N REPS [pack|native] [smollm2|llama-1b]\n");
    return 2;
  }
  const std::string type_name = argv[1];
  DType type = DType::F32;
  bool found = false;
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                  DType::Q5_K, DType::Q6_K}) {
    std::string name(dtype_name(t));
    for (auto& c : name) c = static_cast<char>(c == 'K' ? 'K' : std::tolower(static_cast<unsigned char>(c)));
    if (name == type_name) {
      type = t;
      found = true;
    }
  }
  if (!found) {
    std::fprintf(stderr, "unknown type %s\n", type_name.c_str());
    return 2;
  }
  const int64_t n = std::atoll(argv[2]);
  const int reps = std::atoi(argv[3]);
  const bool pack = argc < 5 || std::strcmp(argv[4], "native") != 0;
  const std::string shape = argc < 6 ? "smollm2" : argv[5];
  int64_t hidden = 576, kv = 192, ffn = 1536;
  if (shape == "llama-1b") {
    hidden = 2048, kv = 512, ffn = 8192;
  } else if (shape != "smollm2") {
    std::fprintf(stderr, "unknown shape %s\n", shape.c_str());
    return 2;
  }
  // q, k, v, o, gate, up, down
  const std::vector<Matrix> layer = {{hidden, hidden}, {hidden, kv}, {hidden, kv}, {hidden, hidden},
                                     {hidden, ffn},    {hidden, ffn}, {ffn, hidden}};

  CpuBackend backend(1, cpu_level(), pack);
  std::mt19937 rng(1);
  uint64_t state = 0x9E3779B97F4A7C15ull;  // xorshift64: cheap random bytes under emulation
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<Tensor> weights, xs, ys;
  // Native-row weights are used in place: their bytes live as long as the backend.
  std::vector<std::vector<uint8_t>> native(layer.size());
  for (size_t i = 0; i < layer.size(); ++i) {
    const Matrix& mat = layer[i];
    std::vector<uint8_t>& bytes = native[i];
    bytes.resize(dtype_row_bytes(type, mat.k) * static_cast<size_t>(mat.m));
    for (size_t at = 0; at < bytes.size(); at += 8) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      std::memcpy(bytes.data() + at, &state, std::min<size_t>(8, bytes.size() - at));
    }
    const size_t block = dtype_block_bytes(type);
    for (size_t at = 0; at < bytes.size(); at += block) {
      for (size_t off : scale_offsets(type)) {
        const uint16_t d = fp32_to_fp16(0.01f * normal(rng));
        std::memcpy(bytes.data() + at + off, &d, 2);
      }
    }
    weights.push_back(backend.weight(type, {mat.k, mat.m, 1, 1}, bytes.data(), nullptr));
    std::vector<float> x(static_cast<size_t>(mat.k * n));
    for (auto& v : x) v = normal(rng);
    xs.push_back(backend.new_tensor(DType::F32, {mat.k, n, 1, 1}));
    backend.write(xs.back(), x.data(), x.size() * sizeof(float));
    ys.push_back(backend.new_tensor(DType::F32, {mat.m, n, 1, 1}));
  }
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < layer.size(); ++i) backend.matmul(weights[i], xs[i], ys[i]);
  }
  backend.synchronize();
  float check = 0.0f;
  std::vector<float> y(static_cast<size_t>(layer.back().m * n));
  backend.read(ys.back(), y.data(), y.size() * sizeof(float));
  for (float v : y) check += v;
  std::string packed = "?";
  for (const auto& [key, value] : backend.device().properties) {
    if (key == "packed_matmul") packed = value;
  }
  std::printf("%s %s n=%lld reps=%d %s level=%s packed_matmul=%s checksum=%g\n", shape.c_str(), type_name.c_str(),
              static_cast<long long>(n), reps, pack ? "pack" : "native", cpu_description().c_str(), packed.c_str(),
              static_cast<double>(check));
  return 0;
}
