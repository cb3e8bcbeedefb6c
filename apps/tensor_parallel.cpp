#include "apps/tensor_parallel.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "bench/memory_bandwidth.h"
#include "core/error.h"
#include "engine/model/tensor_parallel.h"
#include "kernels/registry.h"
#include "shard/plan.h"
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
                     "Each shard's share of heads, FFN features and vocabulary, e.g. 2,1, or even (default: under "
                     "mpirun proportional to each rank's measured matvec speed, even within 10%; in-process even; "
                     "rounded to whole heads and quant blocks)");
  command.add_option("--tp-join", args.join,
                     "How the shards join attn_output and ffn_down: sum (one all-reduce each; rounding differs from "
                     "one device) or gather (two all-gathers each; bit for bit one device's output). Default: gather "
                     "when every shard is on one host, sum across hosts (half the collectives over the network)")
      ->check(CLI::IsMember({"sum", "gather"}));
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

std::string shares_text(const std::vector<double>& shares) {
  std::string out;
  for (size_t i = 0; i < shares.size(); ++i) out += fmt::format("{}{:g}", i > 0 ? ":" : "", shares[i]);
  return out;
}

// What the speed measurement reads: larger than the last-level caches, so it times memory as a
// decode step does. The best of up to 40 passes in about 0.1 s a rank, one rank after another: on
// a loaded 2-core machine 5 passes of both ranks at once read 22.6 and 13.0 GB/s on two equal
// ranks (ctest beside them), 40 at once 23.5 and 17.5; one after another, 8 runs out of 8 within
// 7% of each other.
constexpr size_t kSpeedProbeBytes = size_t{64} << 20;
constexpr int kSpeedProbePasses = 40;
constexpr double kSpeedProbeSeconds = 0.1;

// The join: as asked, or gather where the shards share a host (its two extra all-gathers a layer
// cost little there, and the output is one device's bit for bit: the same greedy text), sum
// across hosts, where every collective pays the network's latency.
std::pair<std::string, std::string> choose_join(const std::string& asked, bool one_host) {
  if (!asked.empty()) return {asked, "as asked"};
  if (one_host) return {"gather", "every shard on one host: one device's output bit for bit"};
  return {"sum", "shards on several hosts: half the collectives of the gather join"};
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
  const bool even = args.shares == "even", by_speed = args.shares.empty();
  std::vector<double> shares = even || by_speed ? std::vector<double>{} : engine::parse_shares(args.shares);
  const engine::SliceGranularity granularity = engine::slice_granularity_of(model.file(), config);
  std::vector<engine::TensorSlice> slices = engine::tensor_slices(config, args.tp, shares, granularity);
  std::string shares_why = even ? "even (--tp-shares even)" : by_speed ? "" : shares_text(shares) + " (--tp-shares)";

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
    std::unique_ptr<shard::MpiCollective> group = mpi_world_->split(grid_.stage, grid_.shard);
    // Asked of the group only when the join is left to it (a collective call: every rank asks).
    const bool group_one_host = args.tp > 1 && args.join.empty() ? group->one_host() : true;
    mpi_comm_ = std::move(group);
    backends_.push_back(kernels::make_backend(backend_spec, {.n_threads = threads}));
    if (args.tp > 1 && by_speed) {
      // Every shard of the group times its own backend and all see every figure, so all compute
      // the same slices. One rank at a time, the others waiting at a barrier: ranks of one host
      // would otherwise read memory against each other.
      float mine = 0.0f;
      for (int r = 0; r < args.tp; ++r) {
        mpi_comm_->barrier();
        if (r != mpi_comm_->rank()) continue;
        mine = static_cast<float>(
            bench::measure_matvec_bandwidth(*backends_[0], kSpeedProbeBytes, kSpeedProbePasses, kSpeedProbeSeconds)
                .bytes_per_second /
            1e9);
      }
      std::vector<float> speeds(static_cast<size_t>(args.tp));
      const std::vector<int64_t> counts(static_cast<size_t>(args.tp), 1);
      mpi_comm_->all_gather(std::span<const float>(&mine, 1), speeds, counts);
      const std::vector<double> gbps(speeds.begin(), speeds.end());
      shares = shard::whole_shares(gbps);
      slices = engine::tensor_slices(config, args.tp, shares, granularity);
      std::string figures;
      for (size_t i = 0; i < gbps.size(); ++i) figures += fmt::format("{}{:.1f}", i > 0 ? ", " : "", gbps[i]);
      const bool all_even = std::all_of(shares.begin(), shares.end(), [&](double s) { return s == shares[0]; });
      shares_why = fmt::format("{} (matvec measured at {} GB/s by shards 0-{}: {})", shares_text(shares), figures,
                               args.tp - 1,
                               all_even ? "within 10% of each other, so even" : "shares proportional to speed");
      // Rank 0 prints its stage's in the description; later stages' leaders say theirs here.
      if (grid_.leader() && rank_ != 0) {
        std::fprintf(stderr, "hearth: tensor parallel: stage %d: shares %s\n", grid_.stage, shares_why.c_str());
      }
    }
    const std::pair<std::string, std::string> joined = choose_join(args.join, group_one_host);
    const std::string& join = joined.first;
    const std::string& join_why = joined.second;
    engine::StageOptions o = options;
    o.tp_join = engine::parse_tp_join(join);
    if (args.tp > 1) {
      o.tp_comm = mpi_comm_.get();
      o.tp_slice = slices[static_cast<size_t>(grid_.shard)];
      if (grid_.leader()) shard::lead_steps(o, *mpi_comm_);
    }
    if (rank_ == 0 && grid_.stages > 1) shard::lead_pipeline(o, *mpi_world_, grid_);
    const int32_t first = grid_.first_layer(grid_.stage, config.n_layer),
                  last = grid_.first_layer(grid_.stage + 1, config.n_layer);
    stages_.push_back(std::make_unique<engine::Stage>(model.file(), config, *backends_[0], first, last, o));
    description_ = fmt::format("{} MPI ranks of {} threads: {} pipeline stage{} of {} shard{}, joined by {} ({}){}; "
                               "rank 0: layers {}-{}{}",
                               mpi_world_->size(), threads, grid_.stages, grid_.stages == 1 ? "" : "s", args.tp,
                               args.tp == 1 ? "" : "s", join, join_why,
                               args.tp > 1 ? ", shares " + shares_why : std::string(), first, last,
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
  const std::pair<std::string, std::string> joined = choose_join(args.join, true);
  const std::string& join = joined.first;
  const std::string& join_why = joined.second;
  const auto options_of = [&](int r) {
    engine::StageOptions o = options;
    o.tp_join = engine::parse_tp_join(join);
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
  if (by_speed) shares_why = "even (in-process shards run one backend on one machine: the same speed, nothing to measure)";
  description_ = fmt::format("{} in-process shards of {} threads, joined by {} ({}), shares {}", args.tp, per_shard,
                             join, join_why, shares_why);
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
