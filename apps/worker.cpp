// `hearth worker`: a node of a cluster. Prints "hearth worker: listening on HOST:PORT" on
// stdout once it accepts peers (what --local-stages reads), then serves coordinators until
// SIGINT / SIGTERM.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "apps/commands.h"
#include "transport/discovery.h"
#include "transport/tcp_link.h"
#include "apps/stop_signals.h"
#include "bench/memory_bandwidth.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/registry.h"
#include "shard/plan.h"
#include "shard/worker.h"
#include "transport/tcp_link.h"

namespace hearth::apps {

int run_worker(const WorkerArgs& args) {
  StopSignals stop_signals;  // before any thread starts

  const transport::HostPort listen = transport::parse_host_port(args.listen);
  shard::WorkerOptions options;
  options.host = listen.host;
  options.port = listen.port;
  options.threads = args.threads;
  options.backend = args.backend.spec();
  for (const std::string& dir : args.model_dirs) options.model_dirs.emplace_back(dir);
  if (!args.memory.empty()) options.memory_bytes = shard::parse_size(args.memory);
  if (!args.no_cache) {
    if (!args.cache_dir.empty()) {
      options.cache_dir = args.cache_dir;
    } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
      options.cache_dir = std::filesystem::path(xdg) / "hearth" / "weights";
    } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
      options.cache_dir = std::filesystem::path(home) / ".cache" / "hearth" / "weights";
    }
  }
  // What the planner weighs stages by: on the CPU, the memory bandwidth this worker's threads
  // sustain (a STREAM-style triad over 3 x 64 MiB, a fraction of a second); on a GPU, the rate
  // a matrix-vector product of 64 MiB of weights reads them on the device.
  const int threads = args.threads > 0 ? args.threads : ThreadPool::hardware_threads();
  if (args.backend.spec().starts_with("cpu")) {
    options.bandwidth_gbps = bench::measure_triad_bandwidth(threads, size_t{64} << 20, 3).bytes_per_second / 1e9;
  } else {
    const std::unique_ptr<kernels::Backend> device = kernels::make_backend(options.backend, {.n_threads = args.threads});
    options.bandwidth_gbps = bench::measure_matvec_bandwidth(*device).bytes_per_second / 1e9;
  }
  const transport::ClusterKey key = transport::load_cluster_key(args.cluster_key);
  shard::Worker worker(options, key);
  std::printf("hearth worker: listening on %s\n", worker.address().c_str());
  std::fflush(stdout);
  // --advertise: beacons for coordinators started with --discover (transport/discovery.h).
  std::unique_ptr<transport::Advertiser> advertiser;
  if (args.advertise) {
    const transport::HostPort listening = transport::parse_host_port(worker.address());
    if (listening.host == "127.0.0.1" || listening.host == "::1" || listening.host == "localhost") {
      std::fprintf(stderr, "hearth worker: --advertise with --listen on loopback: only coordinators on this machine "
                           "can reach it (listen on 0.0.0.0 for the network)\n");
    }
    advertiser = std::make_unique<transport::Advertiser>(key, listening.port);
    std::fprintf(stderr, "hearth worker: advertising port %u on the local network (UDP %u, group %s)\n",
                 static_cast<unsigned>(listening.port), static_cast<unsigned>(transport::kDiscoveryPort),
                 transport::kDiscoveryGroup);
  }
  std::thread server([&] { worker.run(); });
  stop_signals.wait();
  worker.stop();
  server.join();
  return 0;
}

}  // namespace hearth::apps
