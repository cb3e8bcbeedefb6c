// `--tp N` on `hearth run` / `hearth bench`: one stage over every layer cut into N tensor-parallel
// shards (engine/model/tensor_parallel.h). Under `mpirun -np N` each rank runs one shard (rank 0
// schedules and prints, the others follow its steps, shard/tensor_parallel_steps.h) over the Open
// MPI collective; otherwise the N shards are threads of this process over the in-process one.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/generate/model.h"
#include "engine/model/stage.h"
#include "kernels/backend.h"
#include "shard/collective.h"
#ifdef HEARTH_HAS_MPI
#include "shard/mpi_pipeline.h"
#endif

namespace hearth::shard {
class MpiRuntime;
class MpiCollective;
}

namespace hearth::apps {

struct TpArgs {
  int32_t tp = 0;      // shards (0: no tensor parallelism)
  // "2,1": each shard's share of heads, features and vocabulary; "even"; empty: by each rank's
  // measured matvec speed under mpirun, even in-process (the shards share one backend)
  std::string shares;
  // "sum" | "gather" (engine::TpJoin); empty: gather where every shard is on one host, sum
  // across hosts (TpRuntime says why)
  std::string join;
  int32_t pp = 1;            // under mpirun: pipeline stages of tp ranks each (shard/mpi_pipeline.h)
  bool enabled() const { return tp > 0; }
};
void add_tp_options(CLI::App& command, TpArgs& args);

class TpRuntime {
 public:
  // `threads`: CPU threads of the whole run (split among in-process shards; per rank under
  // mpirun). Throws hearth::Error naming the constraint (shares, heads, ranks vs --tp).
  TpRuntime(const TpArgs& args, const engine::Model& model, const std::string& backend_spec, int threads,
            const engine::StageOptions& options);
  ~TpRuntime();
  TpRuntime(const TpRuntime&) = delete;
  TpRuntime& operator=(const TpRuntime&) = delete;

  // True in a process that mpirun started as a rank other than 0 with --tp (it will follow).
  static bool mpi_follower(const TpArgs& args);
  // This process schedules (in-process: always; under mpirun: rank 0).
  bool leader() const { return rank_ == 0; }
  // The leader's shard: a Stage to run steps on (a LocalExecutor's).
  engine::Stage& stage() { return *stages_.front(); }
  // A follower rank under mpirun: runs its shard on the leader's steps until the leader ends.
  void follow();
  std::string describe() const { return description_; }

 private:
#ifdef HEARTH_HAS_MPI
  // Only where MPI is built in: the types are complete in tensor_parallel.cpp only then.
  std::unique_ptr<shard::MpiRuntime> mpi_;
  std::unique_ptr<shard::MpiCollective> mpi_world_;
  shard::MpiGrid grid_;
#endif
  std::unique_ptr<shard::Collective> mpi_comm_;  // this rank's stage group (the world with one stage)
  int mpi_stages_ = 1, mpi_stage_ = 0;
  std::vector<std::unique_ptr<shard::InProcessCollective>> ranks_;
  std::vector<std::unique_ptr<kernels::Backend>> backends_;
  std::vector<std::unique_ptr<engine::Stage>> stages_;  // [0]: this process's (leader's) shard
  std::vector<std::thread> followers_;
  std::vector<std::string> follower_errors_;
  int rank_ = 0;
  std::string description_;
};

}  // namespace hearth::apps
