// A stage: layers [first, last) of a model on one backend, with their KV cache. The first stage
// embeds tokens; the last applies the final norm and the output head. A single-process run is
// a stage over every layer; a cluster cuts the same model into several of these.
//
// A forward pass is one backend step (kernels/backend.h): the per-step inputs (token ids,
// positions, KV slots, output rows; hidden states on later stages) are written into tensors
// first, then every op runs on tensors of one activation arena whose addresses repeat from step
// to step, so a backend may record a step and replay it while the batch shape repeats.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/tensor_map.h"
#include "engine/model/tensor_parallel.h"
#include "engine/token.h"
#include "kernels/backend.h"

namespace hearth::engine {

struct StageInput;

struct StageOptions {
  int32_t n_ctx = 4096;    // positions per sequence slot
  int32_t n_seq = 1;       // sequence slots in the KV cache
  DType kv_type = DType::F16;
  // Tokens per forward pass the activation arena is sized for at load. A larger batch grows the
  // arena (once: the addresses then change, and stay put again).
  int32_t max_batch = 512;
  // Tensor parallelism (engine/model/tensor_parallel.h): with `tp_comm` set, this stage is the
  // shard `tp_slice` of a group of tp_comm->size() shards that run the same steps together; it
  // holds only its slice of each layer and of the KV cache, joins the partial sums through
  // tp_comm and returns the whole output (hidden states, or logits over the whole vocabulary).
  // The comm must outlive the stage. Null: the whole layers.
  TensorParallelComm* tp_comm = nullptr;
  TensorSlice tp_slice{};
  TpJoin tp_join = TpJoin::SumPartials;  // how the shards join attn_output and ffn_down
  // Under tensor parallelism across processes, the shard that schedules (rank 0) hands each
  // step's input to the other shards before it runs its own part: forward() calls this first.
  std::function<void(const StageInput&)> tp_before_forward;
  // A stage that is not the last, in the process that schedules, when the later stages run
  // elsewhere (`mpirun --pp`): after its layers, forward() hands `input` with its hidden states
  // (tokens empty) to this, which runs the rest of the pipeline and leaves the last stage's
  // output for that input (logits, or candidates for input.top_k) in `out`.
  std::function<void(const StageInput&, std::vector<float>& out)> rest_of_pipeline;
};

struct StageInput {
  std::span<const Token> tokens;           // first stage: [n_tokens]
  std::span<const float> hidden;           // later stages: [n_tokens, n_embd]
  std::span<const kernels::KvSlot> slots;  // [n_tokens]: sequence slot and position of each token
  std::span<const int32_t> output_rows;    // last stage: the tokens whose logits are wanted
  // Last stage: > 0 asks, instead of the logits, for each output row's `top_k` best tokens over
  // the whole vocabulary (see Stage::forward); under tensor parallelism each shard then sends
  // its own best and a log-sum-exp, never its logits.
  int32_t top_k = 0;
};

// Stage::forward's output for StageInput::top_k = k: per output row, kCandidateHeader + 2 k floats.
inline constexpr int64_t kCandidateHeader = 1;
inline int64_t candidate_row_width(int32_t k) { return kCandidateHeader + 2 * int64_t{k}; }

class Stage {
 public:
  // Loads (or maps) the weights of layers [first, last) — plus the embedding when first == 0
  // and the output head when last == n_layer — and allocates the KV cache. Throws
  // hearth::Error naming the tensor when one is missing, misshapen or of an unsupported type.
  Stage(const gguf::GgufFile& file, const ModelConfig& config, kernels::Backend& backend, int32_t first,
        int32_t last, const StageOptions& options);

  // Last stage: logits [output_rows.size(), n_vocab]; otherwise hidden states [n_tokens, n_embd].
  // Last stage with input.top_k = k > 0: per output row, candidate_row_width(k) floats: the
  // log-sum-exp of the row's logits over the whole vocabulary, then k (logit, token id) pairs,
  // best first (higher logit, then lower id; NaN never), the ids as exact floats, padded with
  // (-inf, -1) when the vocabulary has fewer tokens. The tokens and logits are the k best of the
  // logits forward() would return, bit for bit; the log-sum-exp is the same up to rounding.
  void forward(const StageInput& input, std::vector<float>& out);

  bool is_first() const { return first_ == 0; }
  bool is_last() const { return last_ == config_.n_layer; }
  int32_t first_layer() const { return first_; }
  int32_t last_layer() const { return last_; }
  const StageOptions& options() const { return options_; }
  const ModelConfig& config() const { return config_; }
  bool tensor_parallel() const { return options_.tp_comm != nullptr; }
  // Under tensor parallelism: the collectives that join the layers (all-reduces, or all-gathers
  // of slices under TpJoin::GatherSlices) and the logits gathers so far, the time spent in them
  // (host copies included), and the bytes this shard handed to them.
  struct TpStats {
    uint64_t all_reduces = 0, gathers = 0, bytes = 0;
    double all_reduce_seconds = 0.0, gather_seconds = 0.0;
  };
  const TpStats& tp_stats() const { return tp_stats_; }

 private:
  struct Layer {
    kernels::Tensor attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, post_attn_norm;
    kernels::Tensor ffn_norm, w_gate, w_up, w_down, post_ffn_norm;
    kernels::KvLayer kv;
    kernels::Tensor& operator[](LayerTensor role);  // the field the tensor map's role names
  };

  // The tensor `desc` describes, checked against it (present when required, shape, F32 where it
  // must be, a type the backend supports). Empty when an optional one is absent.
  kernels::Tensor load(const gguf::GgufFile& file, const TensorDesc& desc);
  // Under tensor parallelism: this shard's slice of the tensor, per the tensor map's SliceRule
  // (rows or columns in whole heads / features / vocabulary rows); the whole tensor otherwise.
  kernels::Tensor load_slice(const gguf::GgufFile& file, const TensorDesc& desc);
  // The rows or columns of `desc` this shard holds: {first, count} in values along the cut.
  std::pair<int64_t, int64_t> slice_range(const TensorDesc& desc) const;
  // Under tensor parallelism, between two ops of a step: closes the step, sums `t` over the
  // group (through the host) and opens the next part of the step (`part` keeps the keys apart).
  void all_reduce(const kernels::Tensor& t, uint64_t key, int32_t part);
  // Under TpJoin::GatherSlices: closes the step, all-gathers every shard's `mine` [n, widths[rank]]
  // into `all` [n, sum of widths] (rank r's values at the columns after ranks < r), opens the next
  // part of the step.
  void gather_slices(const kernels::Tensor& mine, const kernels::Tensor& all, const std::vector<int64_t>& widths,
                     uint64_t key, int32_t part);
  // A new backend step of `key` for the part-th stretch of a step between two collectives.
  void next_part(uint64_t key, int32_t part);
  bool gather_join() const { return tensor_parallel() && options_.tp_join == TpJoin::GatherSlices; }
  // Activation tensors of one step of n tokens and n_out output rows, views of arena_.
  struct Activations {
    kernels::Tensor x, cur, q, k, v, attn, gate, up;   // [n, ...]
    kernels::Tensor attn_all, ff_all, part;             // gather join: [n, q_dim], [n, n_ff], [n, own rows]
    kernels::Tensor tokens, positions, slots, out_rows;  // I32 per-step inputs
    kernels::Tensor picked, logits;                      // [n_out, n_embd], [n_out, n_vocab]
  };
  // Sizes the arena for batches of up to `tokens` tokens and `outputs` output rows.
  void reserve_arena(int64_t tokens, int64_t outputs);
  Activations activations(int64_t n, int64_t n_out) const;
  void run_layer(Layer& layer, int32_t il, const Activations& a, uint64_t key);
  // The StageInput::top_k output from this shard's logits [n_out, n_vocab_] (local_logits_),
  // merged over the group under tensor parallelism.
  void top_candidates(int32_t k, int64_t n_out, std::vector<float>& out);

  ModelConfig config_;
  kernels::Backend& backend_;
  int32_t first_, last_;
  StageOptions options_;
  std::shared_ptr<const MappedFile> mapping_;
  kernels::Tensor token_embd_, output_norm_, output_;
  kernels::Tensor rope_freqs_;  // f32 [n_rot / 2], or empty
  std::vector<Layer> layers_;

  kernels::Arena arena_;
  int64_t arena_tokens_ = 0, arena_outputs_ = 0;  // what arena_ holds
  struct Regions {
    size_t x, cur, q, k, v, attn, gate, up, tokens, positions, slots, out_rows, picked, logits;
    size_t attn_all, ff_all, part;
  } regions_{};
  std::vector<int32_t> positions_;  // host staging of the positions input
  // Tensor parallelism: this shard's head, KV-head and feature counts (the config's otherwise),
  // every shard's vocabulary rows, and host staging for the all-reduces and the logits gather.
  int32_t n_head_ = 0, n_head_kv_ = 0, n_ff_ = 0, n_vocab_ = 0;
  std::vector<int64_t> vocab_counts_;
  // Every shard's widths of the gathered slices (gather join): query values, features, embd rows.
  std::vector<int64_t> q_widths_, ff_widths_, embd_widths_;
  std::vector<float> reduce_buffer_, local_logits_, gathered_, candidates_, hidden_out_;
  TpStats tp_stats_;
};

}  // namespace hearth::engine
