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
#include "shard/mpi_pipeline.h"
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
  command.add_option("--pp", args.pp,
                     "Under mpirun with --tp T: the ranks form this many pipeline stages of T ranks each (np = P x T), "
                     "linked by MPI point-to-point messages")
      ->check(CLI::Range(1, 1024));
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
    if (mpi_->world_size() != args.tp * args.pp) {
      throw Error(fmt::format("mpirun started {} ranks for --tp {} --pp {}: start --tp x --pp ranks",
                              mpi_->world_size(), args.tp, args.pp));
    }
    mpi_world_ = shard::MpiCollective::world();
    rank_ = mpi_world_->rank();
    grid_ = shard::mpi_grid(rank_, mpi_world_->size(), args.tp, config.n_layer);
    mpi_stages_ = grid_.stages, mpi_stage_ = grid_.stage;
    // The shards of this rank's stage, ordered by shard.
    mpi_comm_ = mpi_world_->split(grid_.stage, grid_.shard);
    backends_.push_back(kernels::make_backend(backend_spec, {.n_threads = threads}));
    engine::StageOptions o = options;
    o.tp_join = engine::parse_tp_join(args.join);
    if (args.tp > 1) {
      o.tp_comm = mpi_comm_.get();
      o.tp_slice = slices[static_cast<size_t>(grid_.shard)];
      if (grid_.leader()) shard::lead_steps(o, *mpi_comm_);
    }
    if (rank_ == 0 && grid_.stages > 1) shard::lead_pipeline(o, *mpi_world_, grid_);
    const int32_t first = grid_.first_layer(grid_.stage, config.n_layer),
                  last = grid_.first_layer(grid_.stage + 1, config.n_layer);
    stages_.push_back(std::make_unique<engine::Stage>(model.file(), config, *backends_[0], first, last, o));
    description_ = fmt::format("{} MPI ranks of {} threads: {} pipeline stage{} of {} shard{}, joined by {}; rank 0: "
                               "layers {}-{}{}",
                               mpi_world_->size(), threads, grid_.stages, grid_.stages == 1 ? "" : "s", args.tp,
                               args.tp == 1 ? "" : "s", args.join, first, last,
                               args.tp > 1 ? ", " + slice_text(o.tp_slice) : std::string());
    return;
  }
#endif
  if (args.pp > 1) throw Error("--pp needs mpirun (mpirun -np P*T hearth ... --tp T --pp P)");
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
#ifdef HEARTH_HAS_MPI
    if (mpi_world_ != nullptr && rank_ == 0) shard::stop_pipeline(*mpi_world_, grid_);
#endif
    if (mpi_comm_ != nullptr && rank_ == 0 && mpi_comm_->size() > 1) shard::stop_followers(*mpi_comm_);
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
#ifdef HEARTH_HAS_MPI
  if (grid_.leader()) {
    // The leader of a later stage: steps come from the stage before it; its own shards follow it.
    shard::relay_pipeline(*stages_[0], *mpi_world_, grid_);
    if (mpi_comm_->size() > 1) shard::stop_followers(*mpi_comm_);
    return;
  }
#endif
  shard::follow_steps(*stages_[0], *mpi_comm_);
}

}  // namespace hearth::apps
