#include "shard/mpi_pipeline.h"

#include <array>
#include <vector>

#include "core/error.h"

namespace hearth::shard {
namespace {

enum : int64_t { kStep = 1, kStop = 2, kOutput = 3 };
constexpr int kTagHeader = 17, kTagHidden = 18, kTagSlots = 19, kTagRows = 20, kTagOutput = 21;
// op, hidden values, slots, output rows, top_k (a step); op, output values (the output)
using Header = std::array<int64_t, 5>;
constexpr int64_t kMaxValues = int64_t{1} << 31;

template <class T>
std::span<const std::byte> bytes_of(std::span<const T> v) {
  return std::as_bytes(v);
}
template <class T>
std::span<std::byte> writable_bytes_of(std::vector<T>& v) {
  return std::as_writable_bytes(std::span(v));
}

void send_step(MpiCollective& world, int dest, const engine::StageInput& in) {
  Header h = {kStep, static_cast<int64_t>(in.hidden.size()), static_cast<int64_t>(in.slots.size()),
              static_cast<int64_t>(in.output_rows.size()), in.top_k};
  world.send(std::as_bytes(std::span(h)), dest, kTagHeader);
  world.send(bytes_of(in.hidden), dest, kTagHidden);
  world.send(bytes_of(in.slots), dest, kTagSlots);
  if (!in.output_rows.empty()) world.send(bytes_of(in.output_rows), dest, kTagRows);
}

}  // namespace

int32_t MpiGrid::first_layer(int p, int32_t n_layer) const {
  return static_cast<int32_t>(int64_t{p} * n_layer / stages);
}

MpiGrid mpi_grid(int world_rank, int world_size, int tp, int32_t n_layer) {
  if (tp < 1 || world_size % tp != 0) {
    throw Error(fmt::format("mpirun started {} ranks for --tp {}: start a multiple of --tp ranks (--pp stages of --tp "
                            "ranks each)",
                            world_size, tp));
  }
  MpiGrid g;
  g.shards = tp;
  g.stages = world_size / tp;
  if (g.stages > n_layer) {
    throw Error(fmt::format("{} pipeline stages for a model of {} layers: at most one stage a layer", g.stages, n_layer));
  }
  g.stage = world_rank / tp;
  g.shard = world_rank % tp;
  return g;
}

void lead_pipeline(engine::StageOptions& options, MpiCollective& world, const MpiGrid& grid) {
  HEARTH_CHECK(world.rank() == 0 && grid.stages > 1, "rank 0 leads a pipeline of several stages");
  options.rest_of_pipeline = [&world, grid](const engine::StageInput& in, std::vector<float>& out) {
    send_step(world, grid.leader_of(1), in);
    Header h{};
    const int last = grid.leader_of(grid.stages - 1);
    world.recv(std::as_writable_bytes(std::span(h)), last, kTagHeader);
    if (h[0] != kOutput || h[1] < 0 || h[1] > kMaxValues) {
      throw Error(fmt::format("pipeline output from rank {}: malformed header ({} {})", last, h[0], h[1]));
    }
    out.resize(static_cast<size_t>(h[1]));
    world.recv(writable_bytes_of(out), last, kTagOutput);
  };
}

void relay_pipeline(engine::Stage& stage, MpiCollective& world, const MpiGrid& grid) {
  HEARTH_CHECK(grid.leader() && grid.stage > 0, "the leaders of stages after the first relay");
  const int from = grid.leader_of(grid.stage - 1);
  const bool last = grid.stage == grid.stages - 1;
  std::vector<float> hidden, out;
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (;;) {
    Header h{};
    world.recv(std::as_writable_bytes(std::span(h)), from, kTagHeader, /*idle=*/true);
    if (h[0] == kStop) {
      if (!last) world.send(std::as_bytes(std::span(h)), grid.leader_of(grid.stage + 1), kTagHeader);
      return;
    }
    for (size_t i = 1; i < h.size(); ++i) {
      if (h[0] != kStep || h[i] < 0 || h[i] > kMaxValues) {
        throw Error(fmt::format("pipeline step from rank {}: malformed header ({} {} {} {} {})", from, h[0], h[1], h[2],
                                h[3], h[4]));
      }
    }
    hidden.resize(static_cast<size_t>(h[1]));
    slots.resize(static_cast<size_t>(h[2]));
    rows.resize(static_cast<size_t>(h[3]));
    world.recv(writable_bytes_of(hidden), from, kTagHidden);
    world.recv(writable_bytes_of(slots), from, kTagSlots);
    if (!rows.empty()) world.recv(writable_bytes_of(rows), from, kTagRows);
    const engine::StageInput in{.tokens = {}, .hidden = hidden, .slots = slots, .output_rows = rows,
                                .top_k = static_cast<int32_t>(h[4])};
    stage.forward(in, out);
    if (!last) {
      engine::StageInput next = in;
      next.hidden = out;
      send_step(world, grid.leader_of(grid.stage + 1), next);
      continue;
    }
    Header o = {kOutput, static_cast<int64_t>(out.size()), 0, 0, 0};
    world.send(std::as_bytes(std::span(o)), 0, kTagHeader);
    world.send(bytes_of(std::span<const float>(out)), 0, kTagOutput);
  }
}

void stop_pipeline(MpiCollective& world, const MpiGrid& grid) {
  if (grid.stages < 2) return;
  Header h = {kStop, 0, 0, 0, 0};
  world.send(std::as_bytes(std::span(h)), grid.leader_of(1), kTagHeader);
}

}  // namespace hearth::shard
