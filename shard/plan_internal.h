// Helpers shared by the planner's files (plan_cost, plan_spec, plan_search, plan_print); not
// part of the interface.
#pragma once

#include <cstdint>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"
#include "shard/plan.h"

namespace hearth::shard::plan_detail {

inline constexpr double kInf = std::numeric_limits<double>::infinity();
// Bytes of one step's message without hidden states: token id, position, sequence id (feed);
// sampled token id (return). Their cost is the link's latency.
inline constexpr uint64_t kTokenMessageBytes = 16;
inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Bytes of n values in a plan dtype, rounding a partial q8_0 block up.
inline uint64_t values_bytes(int64_t n, DType type) {
  switch (type) {
    case DType::F32: return static_cast<uint64_t>(n) * 4;
    case DType::F16: return static_cast<uint64_t>(n) * 2;
    case DType::Q8_0: return static_cast<uint64_t>((n + 31) / 32) * 34;
    default: break;
  }
  throw Error(fmt::format("type {} is not a KV-cache or wire type (f32, f16, q8_0)", dtype_name(type)));
}

// make_plan's tail when options.form_tensor_groups: the plan over the advised tensor-parallel
// groups if it is faster than `plain` (plan_tensor.cpp).
PipelinePlan with_tensor_groups(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options,
                                PipelinePlan plain);

inline double link_ms(const LinkSpec& link, uint64_t bytes) {
  return link.latency_ms + static_cast<double>(bytes) * 8.0 / (link.gbit_per_s * 1e9) * 1e3;
}

}  // namespace hearth::shard::plan_detail
