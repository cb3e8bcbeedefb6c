// Pipeline stages of tensor-parallel groups over the ranks of an `mpirun` (`mpirun -np P*T
// hearth run|serve --tp T --pp P`): world rank r is shard r % T of stage r / T, and stage p holds
// layers [p * n_layer / P, (p + 1) * n_layer / P). The shards of a stage form a group (their own
// MpiCollective) whose shard 0, the stage's leader, hands each step to the others (lead_steps /
// follow_steps). The links between stages are MPI point-to-point messages between leaders —
// shared memory on one host, TCP or UCX (RDMA, where the fabric has it; untested here) between
// hosts, as Open MPI chooses:
//   rank 0 (stage 0, the scheduler) -> leader of stage 1: the step (hidden states, KV slots,
//   output rows, top_k) -> ... -> leader of stage P-1 -> rank 0: the last stage's output (logits,
//   or candidates for top_k). One step is in flight at a time (no micro-batch overlap yet).
#pragma once

#include <cstdint>

#include "engine/model/stage.h"
#include "shard/collective.h"
#include "shard/collective_mpi.h"

namespace hearth::shard {

struct MpiGrid {
  int stages = 1, shards = 1;  // P, T
  int stage = 0, shard = 0;    // this rank's
  int leader_of(int p) const { return p * shards; }
  bool leader() const { return shard == 0; }
  // Layers [first, last) of stage p for a model of n_layer layers.
  int32_t first_layer(int p, int32_t n_layer) const;
};

// The grid of `world_size` ranks for `tp` shards a stage. Throws hearth::Error when the ranks do
// not make whole stages, or there are more stages than layers.
MpiGrid mpi_grid(int world_rank, int world_size, int tp, int32_t n_layer);

// Rank 0, building stage 0 (not the last): sets options.rest_of_pipeline to send each step's
// hidden states to the leader of stage 1 and receive the last stage's output. `world` must
// outlive the stage.
void lead_pipeline(engine::StageOptions& options, MpiCollective& world, const MpiGrid& grid);

// The leader of stage p > 0: receives steps from the leader of stage p - 1 until rank 0 stops the
// pipeline, runs `stage` on them (whose group it leads, when the stage has several shards) and
// sends on the hidden states or, from the last stage, the output to rank 0. Passes the stop on.
void relay_pipeline(engine::Stage& stage, MpiCollective& world, const MpiGrid& grid);

// Rank 0: ends every later stage leader's relay_pipeline.
void stop_pipeline(MpiCollective& world, const MpiGrid& grid);

}  // namespace hearth::shard
