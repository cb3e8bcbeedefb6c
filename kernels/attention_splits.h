// How the GPU backends split attention over a sequence (flash-decoding): enough workgroups to
// reach `target` over all tokens and heads (~256 fills a large GPU), no split under 16
// positions, at most 64.
// Shared by kernels/cuda and kernels/vulkan so that both split alike.
#pragma once

#include <algorithm>
#include <cstdint>

namespace hearth::kernels {

inline int attention_splits_for(int64_t n_tokens, int n_head, int32_t n_ctx, int64_t target = 256) {
  const int64_t pairs = std::max<int64_t>(1, n_tokens * n_head);
  const int64_t want = (target + pairs - 1) / pairs;
  const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(64, n_ctx / 16));
  return static_cast<int>(std::min(want, cap));
}

}  // namespace hearth::kernels
