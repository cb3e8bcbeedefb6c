// Tensor parallelism inside a stage (Megatron-style): each of T shards holds a slice of every
// layer and they join their partial results with two all-reduces per layer.
//
//  - Q, K, V (and their biases) are cut by rows in whole heads (grouped-query aware: the KV
//    heads are divided among the shards when there are at least as many as shards — each shard
//    then takes whole groups of query heads —, else every shard holds the one KV head of the
//    group its query heads belong to); the attention output is cut by columns over the same
//    heads and its partial products are summed by an all-reduce.
//  - FFN gate / up are cut by rows (features), down by columns over the same features, then an
//    all-reduce.
//  - Or, joining by gathers (TpJoin::GatherSlices): attn_output and ffn_down are cut by rows
//    (output features of n_embd) instead; the shards all-gather the attention output and the FFN
//    activation first, each computes its rows of the product over the whole input, and they
//    all-gather those. Every dot product is then one device's, in one device's summation order,
//    so the output is bit for bit one device's; it costs two collectives where the sum costs one
//    and moves the FFN activation (n_ff values) instead of a second n_embd sum.
//  - The output head is cut by vocabulary rows; each shard computes the logits of its rows and
//    they are all-gathered into the full vocabulary, or, for greedy and top-k sampling
//    (StageInput::top_k), each shard sends only its k best tokens and a log-sum-exp.
//  - Each shard's KV cache holds its own KV heads only; norms and the embedding are replicated.
//
// Shares may be uneven ({2, 1}: the first shard twice the heads and features of the second):
// each cut is rounded to whole heads (whole KV groups) and whole quant blocks of the tensors cut
// through their columns (engine::slice_granularity), so the share a shard gets is the nearest
// the granularity allows. Which tensors are cut how is the tensor map's SliceRule; this file
// says where.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"

namespace hearth::engine {

// The reductions a tensor-parallel stage needs from its group; shard::Collective implements it
// over threads, Open MPI or NCCL. Every shard of a group calls the same operations in the same
// order (collective semantics). Failures (a peer gone, a timeout) throw hearth::Error.
class TensorParallelComm {
 public:
  virtual ~TensorParallelComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data = sum over ranks of data, in place; every rank gets bit-identical values.
  virtual void all_reduce_sum(std::span<float> data) = 0;
  // all = concatenation of every rank's `mine` in rank order; counts[r] = rank r's length
  // (counts may differ; all.size() == sum of counts).
  virtual void all_gather(std::span<const float> mine, std::span<float> all, std::span<const int64_t> counts) = 0;
};

// How the shards join the two halves of a layer (see the head of this file).
enum class TpJoin {
  SumPartials,   // Megatron: attn_output / ffn_down by columns, one all-reduce each; rounding differs
  GatherSlices,  // attn_output / ffn_down by rows, two all-gathers each; bit for bit one device's
};

// "sum" | "gather"; throws hearth::Error otherwise.
TpJoin parse_tp_join(const std::string& text);
const char* tp_join_name(TpJoin join);

// One shard's part of every layer (global indices: heads, KV heads, FFN features, vocabulary
// rows, and the rows of attn_output / ffn_down it computes when joining by gathers).
struct TensorSlice {
  int32_t head_first = 0, n_head = 0;
  int32_t kv_first = 0, n_head_kv = 0;
  int32_t ff_first = 0, n_ff = 0;
  int32_t vocab_first = 0, n_vocab = 0;
  int32_t embd_first = 0, n_embd = 0;
  friend bool operator==(const TensorSlice&, const TensorSlice&) = default;
};

// How to cut: shares per shard (empty: even), and the granularities the weights impose.
struct SliceGranularity {
  int64_t head_values = 1;  // a head cut must fall on a multiple of this many values (attn_output's blocks)
  int64_t ff_values = 1;    // an FFN cut on a multiple of this many features (ffn_down's blocks)
};

// The granularities of `file`'s weights (the coarsest over every layer's attn_output / ffn_down).
SliceGranularity slice_granularity_of(const gguf::GgufFile& file, const ModelConfig& config);

// `total` units cut into shares.size() contiguous ranges of whole `unit`s (the last may end on a
// partial unit), each as close to its share of the total as rounding allows and none empty.
// Returns the first unit of each range plus `total` at the end. Throws hearth::Error when there
// are fewer whole units than shards or a share is not positive.
std::vector<int64_t> split_by_shares(int64_t total, int64_t unit, std::span<const double> shares, const std::string& what);

// Every shard's slice of a model under `config` with `shares` (empty: `n_shards` even shares).
// Throws hearth::Error naming the constraint when the heads, features or vocabulary cannot be cut so.
std::vector<TensorSlice> tensor_slices(const ModelConfig& config, int32_t n_shards, std::span<const double> shares,
                                       const SliceGranularity& granularity);

// "2,1" -> {2, 1}; throws hearth::Error for anything but positive numbers.
std::vector<double> parse_shares(const std::string& text);

}  // namespace hearth::engine
