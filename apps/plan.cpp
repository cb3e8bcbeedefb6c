// `hearth plan`: which node runs which layers, with the memory each stage needs and the
// tokens/s the split should reach, computed from the model file and a description of the nodes.

#include <cstdio>

#include "apps/commands.h"
#include "bench/memory_bandwidth.h"
#include "core/system_memory.h"
#include "core/thread_pool.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "shard/local_cluster.h"
#include "shard/plan.h"
#include "shard/probe.h"
#include "transport/discovery.h"

#include <cstdint>
#include <nlohmann/json.hpp>
#include "transport/handshake.h"

namespace hearth::apps {

namespace {

// N hypothetical nodes on this machine: its memory split evenly, each with the whole bandwidth
// (true for one sequence; several in flight share it, so the pipelined bound is optimistic).
shard::ClusterSpec local_cluster(const PlanArgs& args) {
  if (args.local < 1) throw Error("--local needs at least one node");
  uint64_t memory = args.memory.empty() ? available_memory_bytes() : shard::parse_size(args.memory);
  if (memory == 0) throw Error("cannot read this machine's available memory: give --memory");
  double bandwidth = args.bandwidth_gbps;
  if (bandwidth <= 0) {
    const auto measured = bench::measure_triad_bandwidth(ThreadPool::hardware_threads(), size_t{64} << 20, 3);
    bandwidth = measured.bytes_per_second / 1e9;
    std::fprintf(stderr, "hearth plan: this machine's memory bandwidth (triad, %d threads): %.1f GB/s\n",
                 measured.threads, bandwidth);
  }
  return shard::local_cluster_spec(args.local, memory, bandwidth);
}

}  // namespace

int run_plan(const PlanArgs& given) {
  PlanArgs args = given;
  if (args.output != "md" && args.output != "json") throw Error(fmt::format("unknown output format '{}' (md, json)", args.output));
  const int sources = (!args.nodes_file.empty() ? 1 : 0) + (!args.workers.empty() ? 1 : 0) + (args.local > 0 ? 1 : 0) +
                      (args.discover ? 1 : 0);
  if (sources != 1) {
    throw Error("hearth plan needs exactly one of --nodes FILE, --workers HOST:PORT,..., --discover or --local N");
  }
  if (args.discover) {
    // The workers that answer on the local network within the wait (transport/discovery.h).
    if (args.cluster_key.empty()) throw Error("--discover needs --cluster-key FILE (the key the workers were started with)");
    const transport::DiscoveryListener listener(transport::load_cluster_key(args.cluster_key));
    // --min-nodes 0 (the default): listen the whole time, so that every worker is heard.
    args.workers = listener.wait_for(args.min_nodes > 0 ? static_cast<size_t>(args.min_nodes) : SIZE_MAX,
                                     std::chrono::milliseconds(static_cast<int64_t>(args.discover_timeout * 1000)));
    if (args.workers.empty()) {
      throw Error(fmt::format("--discover: no worker of this cluster heard in {:g} s ({} other datagram(s) ignored)",
                              args.discover_timeout, listener.ignored()));
    }
  }

  const gguf::GgufFile file = gguf::GgufFile::open(args.model);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  const shard::ModelCost cost = shard::ModelCost::from_gguf(file, config);

  shard::ClusterSpec cluster;
  if (!args.nodes_file.empty()) cluster = shard::load_cluster_file(args.nodes_file);
  else if (!args.workers.empty()) {
    if (args.cluster_key.empty()) throw Error("--workers needs --cluster-key FILE (the key the workers were started with)");
    cluster = shard::probe_workers(args.workers, transport::load_cluster_key(args.cluster_key));
  }
  else cluster = local_cluster(args);
  if (!args.coordinator.empty()) cluster.coordinator = args.coordinator;

  shard::PlanOptions options;
  options.n_ctx = args.ctx_size > 0 ? args.ctx_size : std::min(4096, config.n_ctx_train > 0 ? config.n_ctx_train : 4096);
  options.n_seq = args.parallel;
  options.kv_type = shard::parse_plan_dtype(args.kv_type, "--kv-type");
  options.wire_dtype = shard::parse_plan_dtype(args.wire_dtype, "--wire-dtype");
  options.allow_drop_nodes = !args.keep_all_nodes;
  // Only a nodes file's nodes form tensor-parallel stages: --local's each have this machine's whole
  // bandwidth, and probed CPU workers of one host each measured the whole machine's, so a group of
  // them would count one bandwidth twice (the file says what each node really has: a socket, a GPU).
  options.form_tensor_groups = !args.nodes_file.empty();

  const shard::PipelinePlan plan =
      args.split.empty()
          ? shard::make_plan(cost, cluster, options)
          : shard::make_manual_plan(cost, cluster, options,
                                    shard::parse_split(args.split, cost.n_layer, cluster.nodes.size()));
  std::string out;
  if (args.output == "json") {
    nlohmann::ordered_json j = plan.to_json();
    const shard::PipelinePlan::MpirunForm mpirun = plan.mpirun_form();
    j["mpirun"] = {{"command", mpirun.command}, {"ranks", mpirun.ranks}, {"note", mpirun.note}};
    if (!args.workers.empty()) {
      j["workers"] = nlohmann::ordered_json::array();
      for (const shard::NodeSpec& n : cluster.nodes) {
        j["workers"].push_back({{"node", n.name}, {"address", n.address}, {"backend", n.backend}, {"device", n.device},
                                {"devices", n.devices}});
      }
    }
    out = j.dump(2) + "\n";
  } else {
    out = plan.to_markdown();
    out += shard::tensor_groups_markdown(shard::advise_tensor_groups(cost, cluster));
    if (!args.workers.empty()) {
      out += "\ndevices the workers advertise (* runs the stage):\n";
      for (const shard::NodeSpec& n : cluster.nodes) {
        out += fmt::format("- {} ({}):\n", n.name, n.address);
        for (const std::string& d : n.devices) {
          const bool runs = !n.device.empty() && (d == n.device || d.starts_with(n.device + ","));
          out += fmt::format("  {} {}\n", runs ? "*" : " ", d);
        }
      }
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace hearth::apps
