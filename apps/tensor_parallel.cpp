#include "apps/tensor_parallel.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "engine/model/tensor_parallel.h"
#include "kernels/registry.h"
#include "shard/tensor_parallel_steps.h"
#ifdef HEARTH_HAS_MPI
#include "shard/collective_mpi.h"
#endif

namespace hearth::apps {

void add_tp_options(CLI::App& command, TpArgs& args) {
  command.add_option("--tp", args.tp,
                     "Tensor parallelism: cut every layer into N shards (threads of this process, or the N ranks of "
                     "`mpirun -np N`)")
      ->check(CLI::Range(1, 64));
  command.add_option("--tp-shares", args.shares,
                     "Each shard's share of heads, FFN features and vocabulary, e.g. 2,1 (default: even; rounded to "
                     "whole heads and quant blocks)");
  command.add_option("--tp-join", args.join,
                     "How the shards join attn_output and ffn_down: sum (one all-reduce each; rounding differs from "
                     "one device) or gather (two all-gathers each; bit for bit one device's output)")
      ->check(CLI::IsMember({"sum", "gather"}))
      ->capture_default_str();
}

namespace {

std::string slice_text(const engine::TensorSlice& s) {
  return fmt::format("heads {}-{}, KV heads {}-{}, FFN {}-{}, vocabulary {}-{}, embedding rows {}-{}", s.head_first,
                     s.head_first + s.n_head, s.kv_first, s.kv_first + s.n_head_kv, s.ff_first, s.ff_first + s.n_ff,
                     s.vocab_first, s.vocab_first + s.n_vocab, s.embd_first, s.embd_first + s.n_embd);
}

}  // namespace

bool TpRuntime::mpi_follower(const TpArgs& args) {
#ifdef HEARTH_HAS_MPI
  if (!args.enabled() || !shard::MpiRuntime::launched_by_mpirun()) return false;
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* v = std::getenv(name); v != nullptr) return std::string_view(v) != "0";
  }
#else
  (void)args;
#endif
  return false;
}

TpRuntime::TpRuntime(const TpArgs& args, const engine::Model& model, const std::string& backend_spec, int threads,
                     const engine::StageOptions& options) {
  const engine::ModelConfig& config = model.config();
  const std::vector<double> shares = args.shares.empty() ? std::vector<double>{} : engine::parse_shares(args.shares);
  const std::vector<engine::TensorSlice> slices =
      engine::tensor_slices(config, args.tp, shares, engine::slice_granularity_of(model.file(), config));

#ifdef HEARTH_HAS_MPI
  if (shard::MpiRuntime::launched_by_mpirun()) {
    mpi_ = std::make_unique<shard::MpiRuntime>(nullptr, nullptr);
    if (mpi_->world_size() != args.tp) {
      throw Error(fmt::format("mpirun started {} ranks for --tp {}: start exactly --tp ranks (pipeline stages of "
                              "tensor-parallel groups are not built yet)",
                              mpi_->world_size(), args.tp));
    }
    mpi_comm_ = shard::MpiCollective::world();
    rank_ = mpi_comm_->rank();
    backends_.push_back(kernels::make_backend(backend_spec, {.n_threads = threads}));
    engine::StageOptions o = options;
    o.tp_join = engine::parse_tp_join(args.join);
    o.tp_comm = mpi_comm_.get();
    o.tp_slice = slices[static_cast<size_t>(rank_)];
    if (rank_ == 0) shard::lead_steps(o, *mpi_comm_);
    stages_.push_back(std::make_unique<engine::Stage>(model.file(), config, *backends_[0], 0, config.n_layer, o));
    description_ = fmt::format("{} MPI ranks of {} threads, joined by {}; rank 0: {}", args.tp, threads, args.join,
                               slice_text(o.tp_slice));
    return;
  }
#endif
  // In-process: one thread and one backend per shard, the threads split among them.
  const int per_shard = std::max(1, threads / args.tp);
  // Followers wait for the leader's next step as long as it takes (a failing shard aborts the
  // group, so the timeout only bounds a hang).
  ranks_ = shard::make_in_process_group(args.tp, std::chrono::hours(24 * 365));
  stages_.resize(static_cast<size_t>(args.tp));
  follower_errors_.resize(static_cast<size_t>(args.tp));
  for (int r = 0; r < args.tp; ++r) backends_.push_back(kernels::make_backend(backend_spec, {.n_threads = per_shard}));
  const auto options_of = [&](int r) {
    engine::StageOptions o = options;
    o.tp_join = engine::parse_tp_join(args.join);
    o.tp_comm = ranks_[static_cast<size_t>(r)].get();
    o.tp_slice = slices[static_cast<size_t>(r)];
    return o;
  };
  for (int r = 1; r < args.tp; ++r) {
    followers_.emplace_back([this, r, &model, &config, o = options_of(r)] {
      const auto i = static_cast<size_t>(r);
      try {
        stages_[i] = std::make_unique<engine::Stage>(model.file(), config, *backends_[i], 0, config.n_layer, o);
        shard::follow_steps(*stages_[i], *ranks_[i]);
      } catch (const std::exception& e) {
        follower_errors_[i] = e.what();
        ranks_[i]->abort(fmt::format("shard {}: {}", r, e.what()));
      }
    });
  }
  try {
    engine::StageOptions o = options_of(0);
    shard::lead_steps(o, *ranks_[0]);
    stages_[0] = std::make_unique<engine::Stage>(model.file(), config, *backends_[0], 0, config.n_layer, o);
  } catch (const std::exception& e) {
    ranks_[0]->abort(e.what());
    for (auto& t : followers_) t.join();
    throw;
  }
  description_ = fmt::format("{} in-process shards of {} threads, joined by {}", args.tp, per_shard, args.join);
  for (int r = 0; r < args.tp; ++r) description_ += fmt::format("; shard {}: {}", r, slice_text(slices[static_cast<size_t>(r)]));
}

TpRuntime::~TpRuntime() {
  try {
    if (mpi_comm_ != nullptr && rank_ == 0) shard::stop_followers(*mpi_comm_);
    if (!ranks_.empty()) shard::stop_followers(*ranks_[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hearth: stopping the tensor-parallel shards: %s\n", e.what());
    if (!ranks_.empty()) ranks_[0]->abort(e.what());
  }
  for (auto& t : followers_) t.join();
  stages_.clear();
  mpi_comm_.reset();
}

void TpRuntime::follow() {
  HEARTH_CHECK(mpi_comm_ != nullptr && rank_ != 0, "only a follower rank under mpirun follows");
  shard::follow_steps(*stages_[0], *mpi_comm_);
}

}  // namespace hearth::apps
