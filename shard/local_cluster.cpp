#include "shard/local_cluster.h"

#include "transport/handshake.h"

#include <algorithm>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>

#include "core/error.h"

extern char** environ;

namespace hearth::shard {

namespace {

// Reads the first line the child writes to `fd` (its address), waiting up to `seconds`.
std::string read_line(int fd, double seconds, pid_t pid) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (line.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw Error(fmt::format("worker process {} did not report its address in time", pid));
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buffer[256];
    const ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got <= 0) throw Error(fmt::format("worker process {} exited before it listened (see its messages above)", pid));
    line.append(buffer, static_cast<size_t>(got));
  }
  line.resize(line.find('\n'));
  return line;
}

}  // namespace

LocalCluster::LocalCluster(const std::filesystem::path& hearth, int n, int threads_per_worker, const std::string& backend)
    : LocalCluster(hearth, threads_per_worker,
                   std::vector<std::string>(static_cast<size_t>(std::clamp(n, 0, 65)), backend)) {}

LocalCluster::LocalCluster(const std::filesystem::path& hearth, int threads_per_worker,
                           const std::vector<std::string>& backends)
    : key_(transport::generate_cluster_key()), hearth_(hearth), threads_per_worker_(threads_per_worker), backends_(backends) {
  const int n = static_cast<int>(backends.size());
  if (n < 1 || n > 64) throw Error(fmt::format("--local-stages {}: must be 1..64", n));
  char dir_template[] = "/tmp/hearth-cluster-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) throw Error("cannot create a directory for the cluster key in /tmp");
  dir_ = dir_template;
  transport::write_cluster_key(dir_ / "cluster.key", key_);
  try {
    for (size_t i = 0; i < backends.size(); ++i) {
      auto [pid, address] = spawn(i);
      pids_.push_back(pid);
      addresses_.push_back(std::move(address));
    }
  } catch (...) {
    for (pid_t pid : pids_) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw;
  }
}

std::pair<pid_t, std::string> LocalCluster::spawn(size_t i) const {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw Error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  const std::string exe = hearth_.string();
  const std::string threads = std::to_string(threads_per_worker_);
  const std::string key_path = (dir_ / "cluster.key").string();
  std::vector<std::string> args = {exe, "worker", "--listen", "127.0.0.1:0", "--cluster-key", key_path, "--threads", threads,
                                   "--backend", backends_[i]};
  // Links are encrypted unless both ends ask for plaintext: the workers ask when this process does.
  if (!transport::link_encryption_default()) args.push_back("--insecure-plaintext");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  if (rc != 0) {
    ::close(out[0]);
    throw Error(fmt::format("cannot start {} worker: {}", exe, std::strerror(rc)));
  }
  try {
    const std::string line = read_line(out[0], 30.0, pid);
    ::close(out[0]);
    const std::string prefix = "listening on ";
    const size_t at = line.find(prefix);
    if (at == std::string::npos) throw Error(fmt::format("worker process {} said '{}'", pid, line));
    return {pid, line.substr(at + prefix.size())};
  } catch (...) {
    ::close(out[0]);
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    throw;
  }
}

std::vector<std::string> LocalCluster::addresses() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return addresses_;
}

pid_t LocalCluster::pid(size_t i) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pids_.at(i);
}

int LocalCluster::revive() {
  std::lock_guard<std::mutex> lock(mutex_);
  int revived = 0;
  for (size_t i = 0; i < pids_.size(); ++i) {
    // Still running (or stopped): leave it. A pid of -1 is one that could not be started again.
    if (pids_[i] > 0 && ::waitpid(pids_[i], nullptr, WNOHANG) != pids_[i]) continue;
    try {
      auto [pid, address] = spawn(i);
      pids_[i] = pid;
      addresses_[i] = std::move(address);
      ++revived;
    } catch (const Error&) {
      pids_[i] = -1;  // tried again next time
    }
  }
  return revived;
}

LocalCluster::~LocalCluster() {
  for (pid_t pid : pids_) {
    if (pid > 0) ::kill(pid, SIGTERM);
  }
  for (pid_t pid : pids_) {
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

ClusterSpec local_cluster_spec(int32_t n, uint64_t memory, double bandwidth_gbps,
                               const std::vector<std::string>& addresses) {
  HEARTH_CHECK(n >= 1 && (addresses.empty() || addresses.size() == static_cast<size_t>(n)));
  ClusterSpec cluster;
  for (int32_t i = 0; i < n; ++i) {
    NodeSpec node;
    node.name = fmt::format("local-{}", i);
    if (!addresses.empty()) node.address = addresses[static_cast<size_t>(i)];
    node.host = "localhost";
    node.backend = "cpu";
    node.memory_bytes = memory / static_cast<uint64_t>(n);
    node.bandwidth_gbps = bandwidth_gbps;
    cluster.nodes.push_back(std::move(node));
  }
  cluster.coordinator = "local-0";
  return cluster;
}

std::vector<PipelineStageSpec> plan_stages(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                           const ClusterSpec& cluster, const PlanOptions& options) {
  const ModelCost cost = ModelCost::from_gguf(file, config);
  const PipelinePlan plan = make_plan(cost, cluster, options);
  std::vector<PipelineStageSpec> stages;
  for (const StagePlan& s : plan.stages) {
    if (s.address.empty()) throw Error(fmt::format("node {} has no address to reach it at", s.node));
    stages.push_back({s.address, s.first, s.last});
  }
  return stages;
}

}  // namespace hearth::shard
