// A plan's figures and its forms: JSON (to_json / from_json) and Markdown.
#include "shard/plan.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "engine/model/tensor_map.h"
#include "shard/plan_internal.h"

namespace hearth::shard {

using namespace plan_detail;

// ---------------------------------------------------------------------------------------------
// PipelinePlan

double PipelinePlan::token_ms() const {
  double ms = feed.ms;
  for (const StagePlan& s : stages) ms += s.stage_ms();
  return ms;
}
double PipelinePlan::tokens_per_s() const { return 1000.0 / token_ms(); }
double PipelinePlan::bottleneck_ms() const {
  double ms = 0;
  for (const StagePlan& s : stages) ms = std::max(ms, s.stage_ms());
  return ms;
}
double PipelinePlan::pipelined_tokens_per_s() const { return 1000.0 / bottleneck_ms(); }
double PipelinePlan::parallel_tokens_per_s() const {
  return std::min(static_cast<double>(n_seq) * tokens_per_s(), pipelined_tokens_per_s());
}

PipelinePlan::MpirunForm PipelinePlan::mpirun_form() const {
  MpirunForm f;
  const auto size_of = [](const StagePlan& s) { return std::max<size_t>(1, s.members.size()); };
  const size_t t = size_of(stages.front());
  std::string sizes;
  bool equal = true;
  int32_t rank = 0;
  for (size_t k = 0; k < stages.size(); ++k) {
    const StagePlan& s = stages[k];
    equal = equal && size_of(s) == t;
    sizes += fmt::format("{}{}", k > 0 ? ", " : "", size_of(s));
    const int32_t n = static_cast<int32_t>(size_of(s));
    std::string names;
    for (size_t i = 0; i < s.members.size(); ++i) names += (i > 0 ? ", " : "") + s.members[i];
    f.ranks += fmt::format("{}{}: {}", k > 0 ? "; " : "", n == 1 ? fmt::format("{}", rank) : fmt::format("{}-{}", rank, rank + n - 1),
                           s.members.empty() ? s.node : names);
    rank += n;
  }
  if (!equal) {
    f.note = fmt::format("not one mpirun: its stages have {} nodes, and `mpirun --tp T --pp P` runs stages of T ranks "
                         "each; hearth cannot run stages of different sizes together yet",
                         sizes);
    return f;
  }
  const auto p = static_cast<int32_t>(stages.size());
  f.command = fmt::format("mpirun -np {} hearth serve -m MODEL --tp {} --pp {}", p * static_cast<int32_t>(t), t, p);
  bool even_split = true;
  for (int32_t k = 0; k < p; ++k) {
    const int32_t first = static_cast<int32_t>(static_cast<int64_t>(n_layer) * k / p);
    even_split = even_split && stages[static_cast<size_t>(k)].first == first;
  }
  std::vector<std::string> notes;
  if (!even_split) notes.push_back("mpirun splits the layers evenly across its stages, not as this plan does");
  if (t > 1) notes.push_back("the ranks measure their own speeds for the shares at start (--tp-shares forces them)");
  if (p * t > 1) notes.push_back("place the ranks in this order with --host or a hostfile");
  for (size_t i = 0; i < notes.size(); ++i) f.note += (i > 0 ? "; " : "") + notes[i];
  return f;
}

namespace {
nlohmann::ordered_json hop_json(const HopEstimate& h) {
  return {{"to", h.to}, {"bytes_per_token", h.bytes_per_token}, {"ms", h.ms}};
}
HopEstimate hop_from(const nlohmann::json& j) {
  return {j.at("to").get<std::string>(), j.at("bytes_per_token").get<uint64_t>(), j.at("ms").get<double>()};
}
}  // namespace

nlohmann::ordered_json PipelinePlan::to_json() const {
  nlohmann::ordered_json j;
  j["model"] = model;
  j["n_layer"] = n_layer;
  j["n_ctx"] = n_ctx;
  j["n_seq"] = n_seq;
  j["kv_type"] = kv_type;
  j["wire_dtype"] = wire_dtype;
  j["coordinator"] = coordinator;
  j["manual"] = manual;
  j["feed"] = hop_json(feed);
  j["stages"] = nlohmann::ordered_json::array();
  for (const StagePlan& s : stages) {
    j["stages"].push_back({{"node", s.node},
                           {"address", s.address},
                           {"backend", s.backend},
                           {"device", s.device},
                           {"first_layer", s.first},
                           {"last_layer", s.last},
                           {"weight_bytes", s.weight_bytes},
                           {"kv_bytes", s.kv_bytes},
                           {"compute_bytes", s.compute_bytes},
                           {"memory_bytes", s.memory_bytes},
                           {"memory_budget", s.memory_budget},
                           {"read_bytes_per_token", s.read_bytes_per_token},
                           {"compute_ms", s.compute_ms},
                           {"hop", hop_json(s.hop)},
                           {"stage_ms", s.stage_ms()}});
    if (!s.members.empty()) {
      j["stages"].back()["members"] = s.members;
      j["stages"].back()["shares"] = s.shares;
    }
  }
  if (!why.empty()) j["why"] = why;
  j["dropped"] = nlohmann::ordered_json::array();
  for (const DroppedNode& d : dropped) j["dropped"].push_back({{"node", d.node}, {"reason", d.reason}});
  j["token_ms"] = token_ms();
  j["tokens_per_s"] = tokens_per_s();
  j["pipelined_tokens_per_s"] = pipelined_tokens_per_s();
  j["parallel_tokens_per_s"] = parallel_tokens_per_s();
  return j;
}

PipelinePlan PipelinePlan::from_json(const nlohmann::json& j) {
  try {
    PipelinePlan p;
    p.model = j.at("model").get<std::string>();
    p.n_layer = j.at("n_layer").get<int32_t>();
    p.n_ctx = j.at("n_ctx").get<int32_t>();
    p.n_seq = j.at("n_seq").get<int32_t>();
    p.kv_type = j.at("kv_type").get<std::string>();
    p.wire_dtype = j.at("wire_dtype").get<std::string>();
    p.coordinator = j.at("coordinator").get<std::string>();
    p.manual = j.at("manual").get<bool>();
    p.feed = hop_from(j.at("feed"));
    int32_t next = 0;
    for (const nlohmann::json& s : j.at("stages")) {
      StagePlan st;
      st.node = s.at("node").get<std::string>();
      st.address = s.at("address").get<std::string>();
      st.backend = s.at("backend").get<std::string>();
      st.device = s.value("device", std::string());
      st.first = s.at("first_layer").get<int32_t>();
      st.last = s.at("last_layer").get<int32_t>();
      if (st.first != next || st.last <= st.first) {
        throw Error(fmt::format("stage on {}: layers [{}, {}) do not continue at layer {}", st.node, st.first, st.last, next));
      }
      next = st.last;
      st.weight_bytes = s.at("weight_bytes").get<uint64_t>();
      st.kv_bytes = s.at("kv_bytes").get<uint64_t>();
      st.compute_bytes = s.at("compute_bytes").get<uint64_t>();
      st.memory_bytes = s.at("memory_bytes").get<uint64_t>();
      st.memory_budget = s.at("memory_budget").get<uint64_t>();
      st.read_bytes_per_token = s.at("read_bytes_per_token").get<uint64_t>();
      st.compute_ms = s.at("compute_ms").get<double>();
      st.hop = hop_from(s.at("hop"));
      st.members = s.value("members", std::vector<std::string>{});
      st.shares = s.value("shares", std::vector<double>{});
      if (st.members.size() != st.shares.size()) {
        throw Error(fmt::format("stage on {}: {} members and {} shares", st.node, st.members.size(), st.shares.size()));
      }
      p.stages.push_back(std::move(st));
    }
    if (p.stages.empty() || next != p.n_layer) {
      throw Error(fmt::format("the stages cover layers [0, {}) of {}", next, p.n_layer));
    }
    for (const nlohmann::json& d : j.at("dropped")) {
      p.dropped.push_back({d.at("node").get<std::string>(), d.at("reason").get<std::string>()});
    }
    p.why = j.value("why", std::vector<std::string>{});
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("not a pipeline plan: {}", e.what()));
  }
}

std::string PipelinePlan::to_markdown() const {
  std::string out = fmt::format("model {}: {} layers, context {} x {} sequence{}, KV cache {}, wire {}{}\n\n", model,
                                n_layer, n_ctx, n_seq, n_seq == 1 ? "" : "s", kv_type, wire_dtype,
                                manual ? " (split given by hand)" : "");
  out += "| stage | node | backend | layers | weights | KV cache | memory used / budget | ms/token | link to | bytes/token | link ms |\n";
  out += "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n";
  for (size_t k = 0; k < stages.size(); ++k) {
    const StagePlan& s = stages[k];
    std::string node = s.node;
    if (!s.members.empty()) {
      node.clear();
      for (size_t i = 0; i < s.members.size(); ++i) {
        node += fmt::format("{}{} {:g}", i > 0 ? " + " : "tensor-parallel: ", s.members[i], s.shares[i]);
      }
    }
    out += fmt::format("| {} | {} | {} | {}-{} ({}) | {} | {} | {} / {} | {:.3f} | {} | {} | {:.3f} |\n", k, node,
                       s.device.empty() ? s.backend : fmt::format("{} ({})", s.backend, s.device), s.first, s.last, s.last - s.first, format_bytes(s.weight_bytes),
                       format_bytes(s.kv_bytes), format_bytes(s.memory_bytes), format_bytes(s.memory_budget),
                       s.compute_ms, s.hop.to, s.hop.bytes_per_token, s.hop.ms);
  }
  for (const DroppedNode& d : dropped) out += fmt::format("\nnode {} gets no layers: {}", d.node, d.reason);
  if (!dropped.empty()) out += "\n";
  size_t slowest = 0;
  for (size_t k = 1; k < stages.size(); ++k) {
    if (stages[k].stage_ms() > stages[slowest].stage_ms()) slowest = k;
  }
  double links = feed.ms;
  for (const StagePlan& s : stages) links += s.hop.ms;
  out += fmt::format("\none sequence: {:.1f} tokens/s ({:.3f} ms per token: {:.3f} ms compute + {:.3f} ms links)\n",
                     tokens_per_s(), token_ms(), token_ms() - links, links);
  out += fmt::format("pipelined bound: {:.1f} tokens/s with >= {} sequences in flight (slowest: stage {} on {}, {:.3f} ms)\n",
                     pipelined_tokens_per_s(), stages.size(), slowest, stages[slowest].node, stages[slowest].stage_ms());
  if (n_seq > 1) out += fmt::format("with {} sequences in flight: {:.1f} tokens/s\n", n_seq, parallel_tokens_per_s());
  if (!why.empty()) {
    out += "\nwhy these stages:\n";
    for (const std::string& w : why) out += "- " + w + "\n";
  }
  const MpirunForm mpirun = mpirun_form();
  if (!mpirun.command.empty()) {
    out += fmt::format("\nas MPI ranks: {}   (ranks {}{}{})\n", mpirun.command, mpirun.ranks,
                       mpirun.note.empty() ? "" : "; ", mpirun.note);
  } else {
    out += fmt::format("\nas MPI ranks: {}\n", mpirun.note);
  }
  return out;
}

}  // namespace hearth::shard
