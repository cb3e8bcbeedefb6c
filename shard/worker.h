// A worker node (`hearth worker`): listens for authenticated peers, loads the stage a
// coordinator assigns, and runs it: batches arrive from the coordinator (stage 0) or the
// previous stage, hidden states go straight to the next stage, and the last stage samples and
// returns tokens to the coordinator. Every connection is handled on its own thread: a peer that
// fails the handshake or sends a bad frame loses only its own link, never the node or another
// session.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/handshake.h"
#include "transport/heartbeat.h"
#include "transport/tcp_link.h"

namespace hearth::shard {

struct WorkerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;                       // 0: any free port (see Worker::address())
  int threads = 0;                         // CPU threads (0: all)
  std::string backend = "cpu";             // what stages run on: a kernels::make_backend spec ("cpu", "cuda:0")
  std::vector<std::filesystem::path> model_dirs;  // where to look for the coordinator's model
  // Advertised budget (0: the machine's available memory, or a GPU backend's device memory).
  uint64_t memory_bytes = 0;
  // Measured bandwidth of the device stages run on, advertised to planners (0: unknown).
  double bandwidth_gbps = 0;
  // Weights streamed by coordinators are kept here (shard/weights.h); empty: never accept them.
  std::filesystem::path cache_dir;
  // Use the coordinator's own path when this machine has it (false: act as another machine).
  bool use_coordinator_path = true;
  transport::HeartbeatOptions heartbeat{};
};

class Worker {
 public:
  Worker(WorkerOptions options, transport::ClusterKey key);
  ~Worker();  // stop() and join every thread
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& address() const { return listener_.address(); }
  // Accepts peers until stop(); returns then. Runs on the caller's thread.
  void run();
  void stop();

  // What the worker tells a peer at the handshake (JSON): role, backend (the kind its stages
  // run on), device (that device), devices (every device of every backend, shard/devices.h),
  // threads, memory.
  std::string capabilities() const;
  // Connections refused so far (handshake or bad frames), for tests and logs.
  uint64_t refused() const { return refused_.load(); }
  // Weight bytes received from coordinators so far.
  uint64_t weight_bytes_received() const { return weight_bytes_.load(); }
  // Stages loaded, and stages a session took over from the one before (the same layers).
  uint64_t stages_loaded() const { return stages_loaded_.load(); }
  uint64_t stages_reused() const { return stages_reused_.load(); }

 private:
  struct Session;
  std::string devices_json_;  // {"device": ..., "devices": [...]}, found once at start
  uint64_t device_memory_ = 0;  // a GPU backend's device memory (0: stages live in host memory)
  void serve_connection(std::unique_ptr<transport::TcpLink> link);
  // A coordinator's session: LoadStage, then batches until a link of the session ends.
  void run_session(std::unique_ptr<transport::TcpLink> control);
  std::filesystem::path receive_weights(transport::Link& control, const struct StageAssignment& a);
  // Registers (or forgets) a link stop() must close.
  void track(transport::Link* link, bool add);
  // The upstream link of `session` (from the previous stage), waiting for it to arrive.
  std::unique_ptr<transport::TcpLink> take_upstream(uint64_t session, transport::Timeout timeout);

  // The layers a session loaded, kept when it ends: a coordinator that rebuilds its pipeline
  // after losing another node (shard/recovery.h) usually assigns this worker the same range
  // again, which then starts at once instead of loading. Another range drops them first.
  struct LoadedStage;
  static std::string stage_key(const struct StageAssignment& a);
  // The kept stage when its key is `key` (nullptr otherwise; a kept stage of another key is
  // freed). A session still ending with that key is waited for (up to 2 s): the coordinator closes
  // the old pipeline's links just before it sends the new assignment.
  std::unique_ptr<LoadedStage> take_loaded(const std::string& key);
  void keep_loaded(std::unique_ptr<LoadedStage> loaded);

  WorkerOptions options_;
  transport::ClusterKey key_;
  transport::TcpListener listener_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> weight_bytes_{0};
  std::atomic<uint64_t> stages_loaded_{0}, stages_reused_{0};

  std::mutex mutex_;
  std::condition_variable upstream_ready_;
  std::map<uint64_t, std::unique_ptr<transport::TcpLink>> upstream_;  // by session
  std::condition_variable threads_done_;
  int active_threads_ = 0;                     // connection threads still running
  std::vector<transport::Link*> open_links_;  // closed by stop()
  std::unique_ptr<LoadedStage> loaded_;       // kept from the last session (guarded by mutex_)
  std::multiset<std::string> stages_in_use_;  // keys of the sessions' stages (guarded by mutex_)
  std::condition_variable stage_kept_;
};

}  // namespace hearth::shard
