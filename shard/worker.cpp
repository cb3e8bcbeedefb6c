#include "shard/worker.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "core/system_memory.h"
#include "core/thread_pool.h"
#include "engine/format/gguf.h"
#include "engine/grammar/vocabulary.h"
#include "engine/model/model_config.h"
#include "engine/batch/batch.h"
#include "engine/model/stage.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "shard/devices.h"
#include "shard/stage_assignment.h"
#include "shard/weights.h"
#include "shard/wire.h"
#include "transport/byte_buffer.h"
#include "transport/heartbeat.h"
#include "transport/log.h"

namespace hearth::shard {

using nlohmann::json;
using transport::Link;

namespace {

// Finds the coordinator's model here: its own path when that holds the same file, else a file
// of the same size and identity in one of the model directories.
std::filesystem::path find_model(const StageAssignment& a, const std::vector<std::filesystem::path>& dirs,
                                 bool use_coordinator_path) {
  std::error_code ec;
  if (use_coordinator_path && std::filesystem::is_regular_file(a.model_path, ec) && std::filesystem::file_size(a.model_path, ec) == a.model_size &&
      model_identity(a.model_path) == a.model_identity) {
    return a.model_path;
  }
  for (const auto& dir : dirs) {
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (!entry.is_regular_file(ec) || entry.file_size(ec) != a.model_size) continue;
      if (model_identity(entry.path()) == a.model_identity) return entry.path();
    }
  }
  throw Error(fmt::format("this worker has no copy of the model {} ({} bytes, identity {}): put one in a --model-dir", a.model_name,
                          a.model_size, a.model_identity.substr(0, 16)));
}

}  // namespace

struct Worker::LoadedStage {
  std::string key;
  std::optional<gguf::GgufFile> file;
  std::optional<engine::ModelConfig> config;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<engine::Stage> stage;
  std::shared_ptr<const engine::grammar::Vocabulary> vocabulary;  // on a last stage, for grammars
  ~LoadedStage() {
    stage.reset();  // before the backend that owns its buffers
    backend.reset();
  }
};

std::string Worker::stage_key(const StageAssignment& a) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}", a.model_identity, a.first, a.last, a.n_ctx, a.n_seq,
                     static_cast<int>(a.kv_type), a.n_batch);
}

std::unique_ptr<Worker::LoadedStage> Worker::take_loaded(const std::string& key) {
  std::unique_ptr<LoadedStage> loaded;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    stage_kept_.wait_for(lock, std::chrono::seconds(2), [&] {
      return stopping_.load() || (loaded_ && loaded_->key == key) || stages_in_use_.count(key) == 0;
    });
    loaded = std::move(loaded_);
    stages_in_use_.insert(key);
  }
  if (loaded && loaded->key != key) loaded.reset();  // another range: free its memory before loading
  return loaded;
}

void Worker::keep_loaded(std::unique_ptr<LoadedStage> loaded) {
  if (!loaded) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = stages_in_use_.find(loaded->key); it != stages_in_use_.end()) stages_in_use_.erase(it);
    if (!stopping_ && loaded->stage) loaded_ = std::move(loaded);
  }
  stage_kept_.notify_all();
}

Worker::Worker(WorkerOptions options, transport::ClusterKey key)
    : options_(std::move(options)),
      key_(std::move(key)),
      listener_(pipeline_frame_limits(), options_.host, options_.port) {
  // Refuses an unknown backend or device at start (naming what exists), not at the first LoadStage.
  const kernels::BackendOptions bo{.n_threads = options_.threads};
  const std::unique_ptr<kernels::Backend> probe = kernels::make_backend(options_.backend, bo);
  // The measured bandwidth is that of the device stages run on (apps/worker.cpp measures it).
  const kernels::DeviceInfo mine = probe->device();
  const auto bandwidth = [&](const kernels::DeviceInfo& d) {
    return d.backend == mine.backend && d.index == mine.index ? options_.bandwidth_gbps : 0.0;
  };
  nlohmann::ordered_json devices = nlohmann::ordered_json::array();
  for (const auto& report : kernels::list_backends(bo)) {
    for (const kernels::DeviceInfo& d : report.devices) devices.push_back(device_json(d, bandwidth(d)));
  }
  // On a GPU, a stage's weights, cache and activations live in the device's memory.
  if (mine.backend != "cpu") device_memory_ = mine.memory_free;
  devices_json_ = nlohmann::ordered_json{{"device", device_json(mine, bandwidth(mine))}, {"devices", devices}}.dump();
}

Worker::~Worker() {
  stop();
  std::unique_lock<std::mutex> lock(mutex_);
  threads_done_.wait(lock, [&] { return active_threads_ == 0; });
}

std::string Worker::capabilities() const {
  const int threads = options_.threads > 0 ? options_.threads : ThreadPool::hardware_threads();
  const uint64_t memory = options_.memory_bytes > 0 ? options_.memory_bytes
                          : device_memory_ > 0     ? device_memory_
                                                   : available_memory_bytes();
  const json devices = json::parse(devices_json_);
  json caps = {{"role", "worker"},
               {"backend", devices["device"]["backend"]},
               {"device", devices["device"]},
               {"devices", devices["devices"]},
               {"cpu", kernels::cpu_description()},
               {"threads", threads},
               {"memory_bytes", memory}};
  if (options_.bandwidth_gbps > 0) caps["bandwidth_gbps"] = options_.bandwidth_gbps;
  return caps.dump();
}

void Worker::stop() {
  stopping_ = true;
  listener_.close();
  std::lock_guard<std::mutex> lock(mutex_);
  for (Link* link : open_links_) link->close("the worker is stopping");
  upstream_ready_.notify_all();
  stage_kept_.notify_all();
}

void Worker::run() {
  transport::log_line(fmt::format("hearth worker: listening on {}", address()));
  while (!stopping_) {
    std::unique_ptr<transport::TcpLink> link = listener_.accept(transport::Timeout(500));
    if (!link) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    ++active_threads_;
    std::thread([this, l = std::move(link)]() mutable {
      serve_connection(std::move(l));
      std::lock_guard<std::mutex> done(mutex_);
      --active_threads_;
      threads_done_.notify_all();
    }).detach();
  }
}

void Worker::track(Link* link, bool add) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (add) {
    open_links_.push_back(link);
    if (stopping_) link->close("the worker is stopping");
  } else {
    std::erase(open_links_, link);
  }
}

void Worker::serve_connection(std::unique_ptr<transport::TcpLink> link) {
  const std::string peer = link->peer();
  json caps;
  try {
    transport::HandshakeOptions hs;
    hs.capabilities = capabilities();
    const transport::HandshakeResult result = transport::handshake(*link, transport::Role::responder, key_, hs);
    caps = json::parse(result.peer_capabilities);
    if (!caps.is_object() || !caps.contains("role") || !caps["role"].is_string()) throw WireError("capabilities without a role");
  } catch (const std::exception& e) {
    ++refused_;
    transport::log_line(fmt::format("hearth worker: refused {}: {}", peer, e.what()));
    return;
  }
  const std::string role = caps["role"].get<std::string>();
  if (role == "probe") return;  // the capabilities were all it wanted
  if (role == "coordinator") {
    run_session(std::move(link));
  } else if (role == "upstream" && caps.contains("session") && caps["session"].is_number_unsigned()) {
    std::lock_guard<std::mutex> lock(mutex_);
    upstream_[caps["session"].get<uint64_t>()] = std::move(link);
    upstream_ready_.notify_all();
  } else {
    ++refused_;
    link->close("unknown role");
    transport::log_line(fmt::format("hearth worker: refused {}: unknown role '{}'", peer, role));
  }
}

std::unique_ptr<transport::TcpLink> Worker::take_upstream(uint64_t session, transport::Timeout timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  upstream_ready_.wait_for(lock, timeout, [&] { return stopping_.load() || upstream_.count(session) > 0; });
  auto it = upstream_.find(session);
  if (it == upstream_.end()) throw Error("the previous stage did not connect in time");
  auto link = std::move(it->second);
  upstream_.erase(it);
  return link;
}

// No copy here: ask the coordinator for the stage's bytes beyond what the cache holds, and
// store what it sends. Returns the cache file.
std::filesystem::path Worker::receive_weights(transport::Link& control, const StageAssignment& a) {
  WeightCache cache(options_.cache_dir, a.model_identity, a.model_size);
  send_json(control, msg::kStageReady, {{"ok", false}, {"need_weights", true}, {"have", ranges_to_json(cache.held())}},
            transport::Timeout(5000));
  transport::ByteBuffer buffer;
  while (true) {
    // Other stages may be streamed first: wait generously.
    const auto m = control.receive(buffer, transport::Timeout(600000));
    if (!m) throw Error("the coordinator sent no weights for 10 minutes");
    if (m->type == msg::kWeightsDone) break;
    if (m->type != msg::kWeightChunk || m->payload.size() < 8) throw WireError("expected WeightChunk or WeightsDone");
    uint64_t offset = 0;
    std::memcpy(&offset, m->payload.data(), 8);
    cache.write(offset, m->payload.subspan(8));
    weight_bytes_ += m->payload.size() - 8;
  }
  cache.commit();
  return cache.path();
}

void Worker::run_session(std::unique_ptr<transport::TcpLink> control) {
  const std::string coordinator = control->peer();
  track(control.get(), true);
  std::unique_ptr<transport::TcpLink> upstream, downstream;
  std::unique_ptr<LoadedStage> loaded;
  std::vector<std::unique_ptr<transport::LinkMonitor>> monitors;
  std::thread control_reader, downstream_reader;
  auto close_all = [&](const std::string& reason) {
    for (Link* l : {static_cast<Link*>(control.get()), static_cast<Link*>(upstream.get()), static_cast<Link*>(downstream.get())}) {
      if (l != nullptr) l->close(reason);
    }
  };
  try {
    transport::ByteBuffer buffer;
    const auto m = control->receive(buffer, transport::Timeout(60000));
    if (!m) throw Error("no LoadStage within 60 s");
    if (m->type != msg::kLoadStage) throw WireError(fmt::format("expected LoadStage, got message type {}", m->type));
    const StageAssignment a = StageAssignment::from_json(parse_json(m->payload, "LoadStage"));

    loaded = take_loaded(stage_key(a));
    const bool reused = loaded != nullptr;
    try {
      if (!loaded) {
        loaded = std::make_unique<LoadedStage>();
        loaded->key = stage_key(a);
        std::filesystem::path path;
        try {
          path = find_model(a, options_.model_dirs, options_.use_coordinator_path);
        } catch (const Error&) {
          if (options_.cache_dir.empty()) throw;
          path = receive_weights(*control, a);
        }
        loaded->file.emplace(gguf::GgufFile::open(path));
        loaded->config.emplace(engine::ModelConfig::from_gguf(*loaded->file));
        const engine::ModelConfig& c = *loaded->config;
        if (a.last > c.n_layer) throw Error(fmt::format("layers [{}, {}) of a {}-layer model", a.first, a.last, c.n_layer));
        const int threads = options_.threads > 0 ? options_.threads : ThreadPool::hardware_threads();
        loaded->backend = kernels::make_backend(options_.backend, {.n_threads = threads});
        engine::StageOptions so;
        so.n_ctx = a.n_ctx;
        so.n_seq = a.n_seq;
        so.kv_type = a.kv_type;
        so.max_batch = a.n_batch;
        loaded->stage = std::make_unique<engine::Stage>(*loaded->file, c, *loaded->backend, a.first, a.last, so);
        ++stages_loaded_;
      } else {
        ++stages_reused_;
      }
      // A stage kept from an earlier session holds that session's KV cache; a coordinator
      // starts every sequence over from position 0 on a new session, so nothing stale is read.
      if (a.wire == WireDtype::Q8_0 && loaded->config->n_embd % 32 != 0) throw Error("q8_0 on the wire needs n_embd % 32 == 0");
      if (!a.next.empty()) {
        downstream = transport::tcp_connect(a.next, transport::Timeout(10000), pipeline_frame_limits());
        transport::HandshakeOptions hs;
        hs.capabilities = json{{"role", "upstream"}, {"session", a.session}}.dump();
        transport::handshake(*downstream, transport::Role::initiator, key_, hs);
        track(downstream.get(), true);
      } else if (!loaded->stage->is_last()) {
        throw Error("a stage that is not the last needs the address of the next one");
      }
      if (!loaded->stage->is_first()) {
        upstream = take_upstream(a.session, transport::Timeout(60000));
        track(upstream.get(), true);
      }
    } catch (const Error& e) {
      // Loaded layers stay kept (keep_loaded below) when only a link failed.
      send_json(*control, msg::kStageReady, {{"ok", false}, {"error", e.what()}}, transport::Timeout(5000));
      throw;
    }
    engine::Stage* stage = loaded->stage.get();
    kernels::Backend* backend = loaded->backend.get();
    const engine::ModelConfig* config = &*loaded->config;
    send_json(*control, msg::kStageReady,
              {{"ok", true},
               {"weight_bytes_received", weight_bytes_.load()},
               {"first", a.first},
               {"last", a.last},
               {"backend", backend->name()},
               {"device", device_line(device_json(backend->device()))},
               {"cpu", kernels::cpu_description()}},
              transport::Timeout(5000));
    transport::log_line(fmt::format("hearth worker: stage {}/{} (layers [{}, {}) of {}) for {}{}", a.stage + 1, a.n_stages,
                                    a.first, a.last, a.model_name, coordinator,
                                    reused ? " (the layers it already held)" : ""));

    // A dead neighbour closes every link of the session, which ends the loop below.
    for (Link* l : {static_cast<Link*>(control.get()), static_cast<Link*>(upstream.get()), static_cast<Link*>(downstream.get())}) {
      if (l == nullptr) continue;
      monitors.push_back(std::make_unique<transport::LinkMonitor>(
          *l, options_.heartbeat, [&close_all, peer = l->peer()](const std::string& why) { close_all(fmt::format("{}: {}", peer, why)); }));
    }
    Link& in = upstream ? static_cast<Link&>(*upstream) : static_cast<Link&>(*control);
    Link& out = downstream ? static_cast<Link&>(*downstream) : static_cast<Link&>(*control);
    // Links this stage does not receive batches on: the coordinator's (unless it is the input)
    // and the next stage's. Their peers send nothing but heartbeats, which must be read, and
    // perhaps a Close, whose reason ends the session and goes on in this stage's own Closes: a
    // next stage that refused a frame is named to the coordinator, not a bare closed connection.
    const auto read_heartbeats = [&close_all](Link& link, const char* who) {
      return std::thread([&close_all, &link, who] {
        transport::ByteBuffer b;
        try {
          while (true) {
            if (auto other = link.receive(b); other) {
              throw WireError(fmt::format("unexpected message type {} from {}", other->type, who));
            }
          }
        } catch (const Error& e) {
          close_all(e.what());
        }
      });
    };
    if (&in != control.get()) control_reader = read_heartbeats(*control, "the coordinator");
    if (downstream) downstream_reader = read_heartbeats(*downstream, "the next stage");

    const int64_t n_embd = config->n_embd;
    const size_t n_vocab = static_cast<size_t>(config->n_vocab);
    // Token bytes for grammar-constrained sequences (the last stage samples), kept with the stage.
    if (stage->is_last() && !loaded->vocabulary && loaded->file->contains("tokenizer.ggml.tokens")) {
      loaded->vocabulary = engine::grammar::vocabulary_from_gguf(*loaded->file);
    }
    engine::SlotSamplers samplers(a.n_seq, stage->is_last() ? loaded->vocabulary : nullptr);
    BatchMessage batch;
    std::vector<engine::Token> tokens;
    std::vector<kernels::KvSlot> kv_slots;
    std::vector<int32_t> output_rows;
    std::vector<float> hidden, result;
    std::vector<std::byte> wire_bytes;
    transport::ByteBuffer in_buffer;
    while (true) {
      const auto message = in.receive(in_buffer);
      if (!message) continue;
      if (message->type != msg::kBatch) throw WireError(fmt::format("expected Batch, got message type {}", message->type));
      decode_batch(message->payload, a.n_seq, a.n_ctx, !stage->is_first(), n_embd, batch);
      engine::flatten_entries(batch.entries, tokens, kv_slots, output_rows);
      if (!stage->is_first()) {
        hidden.resize(tokens.size() * static_cast<size_t>(n_embd));
        decode_hidden(batch.hidden_dtype, batch.hidden, n_embd, hidden);
      }
      const auto started = std::chrono::steady_clock::now();
      stage->forward({.tokens = tokens, .hidden = hidden, .slots = kv_slots, .output_rows = output_rows}, result);
      std::vector<float> stage_seconds = batch.stage_seconds;
      if (stage->is_last()) {
        const std::vector<engine::SampledToken> sampled = samplers.sample(batch.entries, result, n_vocab);
        stage_seconds.push_back(std::chrono::duration<float>(std::chrono::steady_clock::now() - started).count());
        const std::vector<std::byte> payload = encode_sampled(batch.id, sampled, stage_seconds);
        out.send(msg::kSampled, payload);
      } else {
        stage_seconds.push_back(std::chrono::duration<float>(std::chrono::steady_clock::now() - started).count());
        const std::vector<std::byte> head = encode_batch_head(batch.id, batch.entries, n_embd, a.wire, stage_seconds);
        encode_hidden(a.wire, result, n_embd, wire_bytes);
        const transport::ByteSpan segments[] = {head, wire_bytes};
        out.send(msg::kBatch, segments);
      }
    }
  } catch (const std::exception& e) {
    transport::log_line(fmt::format("hearth worker: session with {} ended: {}", coordinator, e.what()));
    close_all(e.what());
  }
  if (control_reader.joinable()) control_reader.join();
  if (downstream_reader.joinable()) downstream_reader.join();
  monitors.clear();
  for (Link* l : {static_cast<Link*>(control.get()), static_cast<Link*>(upstream.get()), static_cast<Link*>(downstream.get())}) {
    if (l != nullptr) track(l, false);
  }
  keep_loaded(std::move(loaded));
}

}  // namespace hearth::shard
