#include "engine/model/tensor_parallel.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "engine/model/tensor_map.h"

namespace hearth::engine {

SliceGranularity slice_granularity_of(const gguf::GgufFile& file, const ModelConfig& config) {
  SliceGranularity g;
  for (int32_t il = 0; il < config.n_layer; ++il) {
    for (LayerTensor role : {LayerTensor::AttnOutput, LayerTensor::Down}) {
      const TensorDesc desc = layer_tensor(config, il, role);
      const gguf::TensorInfo* info = file.find_tensor(desc.name);
      if (info == nullptr) continue;  // the stage refuses it by name when it loads
      const int64_t values = slice_granularity(desc, info->type);
      int64_t& into = role == LayerTensor::AttnOutput ? g.head_values : g.ff_values;
      into = std::lcm(into, values);
    }
  }
  return g;
}

std::vector<int64_t> split_by_shares(int64_t total, int64_t unit, std::span<const double> shares, const std::string& what) {
  const auto n = static_cast<int64_t>(shares.size());
  HEARTH_CHECK(n > 0 && unit > 0 && total > 0);
  double sum = 0.0;
  for (double s : shares) {
    if (!(s > 0.0) || !std::isfinite(s)) throw Error(fmt::format("tensor-parallel share {} is not a positive number", s));
    sum += s;
  }
  const int64_t units = (total + unit - 1) / unit;
  if (units < n) {
    throw Error(fmt::format("{} cannot be cut into {} shards: {} in whole units of {} give only {} part{}", what, n, total,
                            unit, units, units == 1 ? "" : "s"));
  }
  std::vector<int64_t> bounds(static_cast<size_t>(n) + 1, 0);
  double cumulative = 0.0;
  for (int64_t i = 1; i < n; ++i) {
    cumulative += shares[static_cast<size_t>(i - 1)];
    // The share of the values (not of the units: the last unit may be partial), to whole units.
    const auto ideal = static_cast<int64_t>(
        std::llround(cumulative / sum * static_cast<double>(total) / static_cast<double>(unit)));
    bounds[static_cast<size_t>(i)] = std::clamp(ideal, bounds[static_cast<size_t>(i - 1)] + 1, units - (n - i));
  }
  bounds[static_cast<size_t>(n)] = units;
  for (int64_t& b : bounds) b = std::min(b * unit, total);
  return bounds;
}

std::vector<TensorSlice> tensor_slices(const ModelConfig& c, int32_t n_shards, std::span<const double> shares,
                                       const SliceGranularity& granularity) {
  if (n_shards < 1) throw Error(fmt::format("tensor parallelism needs at least one shard, not {}", n_shards));
  std::vector<double> even(static_cast<size_t>(n_shards), 1.0);
  if (shares.empty()) shares = even;
  if (static_cast<int32_t>(shares.size()) != n_shards) {
    throw Error(fmt::format("{} tensor-parallel shares given for {} shards", shares.size(), n_shards));
  }
  std::vector<TensorSlice> out(static_cast<size_t>(n_shards));
  const int64_t hd = c.head_dim;
  const int32_t group = c.n_head / c.n_head_kv;
  // Heads per whole cut of attn_output's columns.
  const int64_t head_unit = std::lcm(hd, std::max<int64_t>(1, granularity.head_values)) / hd;
  if (c.n_head_kv >= n_shards) {
    // Whole KV groups per shard, in units that keep the query-head cut on whole blocks.
    const int64_t kv_unit = head_unit / std::gcd(head_unit, int64_t{group});
    const std::vector<int64_t> b = split_by_shares(
        c.n_head_kv, kv_unit, shares,
        fmt::format("{} KV heads (groups of {} heads{})", c.n_head_kv, group,
                    kv_unit > 1 ? fmt::format(", attn_output in blocks of {} values", granularity.head_values) : ""));
    for (size_t i = 0; i < out.size(); ++i) {
      out[i].kv_first = static_cast<int32_t>(b[i]);
      out[i].n_head_kv = static_cast<int32_t>(b[i + 1] - b[i]);
      out[i].head_first = out[i].kv_first * group;
      out[i].n_head = out[i].n_head_kv * group;
    }
  } else {
    // Fewer KV heads than shards: each KV head is replicated on the shards that share its group,
    // which must divide evenly so that no shard's heads straddle two groups.
    if (n_shards % c.n_head_kv != 0) {
      throw Error(fmt::format("{} shards cannot share {} KV heads: with fewer KV heads than shards, the number of shards "
                              "must be a multiple of the KV heads",
                              n_shards, c.n_head_kv));
    }
    const int32_t per_group = n_shards / c.n_head_kv;
    for (int32_t g = 0; g < c.n_head_kv; ++g) {
      const std::span<const double> group_shares = shares.subspan(static_cast<size_t>(g * per_group),
                                                                  static_cast<size_t>(per_group));
      const std::vector<int64_t> b = split_by_shares(group, head_unit, group_shares,
                                                     fmt::format("the {} query heads of KV head {}", group, g));
      for (int32_t s = 0; s < per_group; ++s) {
        TensorSlice& t = out[static_cast<size_t>(g * per_group + s)];
        t.kv_first = g;
        t.n_head_kv = 1;
        t.head_first = g * group + static_cast<int32_t>(b[static_cast<size_t>(s)]);
        t.n_head = static_cast<int32_t>(b[static_cast<size_t>(s) + 1] - b[static_cast<size_t>(s)]);
      }
    }
  }
  for (const TensorSlice& t : out) {
    if ((t.head_first * hd) % std::max<int64_t>(1, granularity.head_values) != 0) {
      throw Error(fmt::format("a shard's heads would start at head {}, which is not a whole block of {} values of "
                              "attn_output",
                              t.head_first, granularity.head_values));
    }
  }
  const std::vector<int64_t> ff = split_by_shares(c.n_ff, std::max<int64_t>(1, granularity.ff_values), shares,
                                                  fmt::format("{} FFN features (ffn_down in blocks of {})", c.n_ff,
                                                              granularity.ff_values));
  const std::vector<int64_t> vocab = split_by_shares(c.n_vocab, 1, shares, fmt::format("{} vocabulary rows", c.n_vocab));
  const std::vector<int64_t> embd = split_by_shares(c.n_embd, 1, shares, fmt::format("{} embedding rows", c.n_embd));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].ff_first = static_cast<int32_t>(ff[i]);
    out[i].n_ff = static_cast<int32_t>(ff[i + 1] - ff[i]);
    out[i].vocab_first = static_cast<int32_t>(vocab[i]);
    out[i].n_vocab = static_cast<int32_t>(vocab[i + 1] - vocab[i]);
    out[i].embd_first = static_cast<int32_t>(embd[i]);
    out[i].n_embd = static_cast<int32_t>(embd[i + 1] - embd[i]);
  }
  return out;
}

TpJoin parse_tp_join(const std::string& text) {
  if (text == "sum") return TpJoin::SumPartials;
  if (text == "gather") return TpJoin::GatherSlices;
  throw Error(fmt::format("tensor-parallel join '{}': expected 'sum' or 'gather'", text));
}

const char* tp_join_name(TpJoin join) { return join == TpJoin::SumPartials ? "sum" : "gather"; }

std::vector<double> parse_shares(const std::string& text) {
  std::vector<double> shares;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    double v = 0.0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc{} || end != item.data() + item.size() || !(v > 0.0) || !std::isfinite(v)) {
      throw Error(fmt::format("tensor-parallel shares '{}': '{}' is not a positive number", text, item));
    }
    shares.push_back(v);
    at = comma + 1;
  }
  return shares;
}

}  // namespace hearth::engine
