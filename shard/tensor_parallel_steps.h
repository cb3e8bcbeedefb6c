// The steps of a tensor-parallel stage across processes: the rank that schedules (0, the
// leader) runs the Scheduler and its own shard; before each forward pass it broadcasts the
// step's input (token ids or hidden states, KV slots, output rows) over the group's Collective,
// and every other rank (a follower) runs its shard on the same input, taking part in the
// all-reduces. The leader ends the followers' loop with a stop message.
#pragma once

#include "engine/model/stage.h"
#include "shard/collective.h"

namespace hearth::shard {

// Makes a stage built with these options the leader: sets options.tp_before_forward to broadcast
// each step's input over `comm` (rank 0 of it). `comm` must outlive the stage.
void lead_steps(engine::StageOptions& options, Collective& comm);

// A follower's loop: receives each step from rank 0 and runs `stage` on it, until the leader
// calls stop_followers. Throws hearth::Error when the group fails.
void follow_steps(engine::Stage& stage, Collective& comm);

// Leader: ends every follower's follow_steps.
void stop_followers(Collective& comm);

}  // namespace hearth::shard
