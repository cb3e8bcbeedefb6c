#include "shard/pipeline.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <random>

#include "core/error.h"
#include "shard/stage_assignment.h"
#include "shard/weights.h"
#include "transport/byte_buffer.h"
#include "transport/log.h"

namespace hearth::shard {

using nlohmann::json;

namespace {
std::string stage_name(size_t i, const PipelineStageSpec& s) {
  return fmt::format("stage {} ({}, layers [{}, {}))", i, s.address, s.first, s.last);
}
}  // namespace

PipelineExecutor::PipelineExecutor(const std::filesystem::path& model_path, const engine::ModelConfig& config,
                                   std::vector<PipelineStageSpec> specs, const transport::ClusterKey& key,
                                   PipelineOptions options)
    : options_(options), n_vocab_(config.n_vocab) {
  if (specs.empty()) throw Error("a pipeline needs at least one stage");
  for (size_t i = 0; i < specs.size(); ++i) {
    const int32_t expected_first = i == 0 ? 0 : specs[i - 1].last;
    if (specs[i].first != expected_first || specs[i].last <= specs[i].first) {
      throw Error(fmt::format("stage {} has layers [{}, {}): stages must cover the layers in order", i, specs[i].first, specs[i].last));
    }
  }
  if (specs.back().last != config.n_layer) {
    throw Error(fmt::format("the stages end at layer {} but the model has {}", specs.back().last, config.n_layer));
  }
  StageAssignment base;
  base.session = std::random_device{}() | (static_cast<uint64_t>(std::random_device{}()) << 32);
  base.n_stages = static_cast<int32_t>(specs.size());
  base.n_ctx = options.n_ctx;
  base.n_seq = options.n_seq;
  base.n_batch = options.n_batch;
  base.kv_type = options.kv_type;
  base.wire = options.wire;
  base.model_name = model_path.filename().string();
  base.model_path = std::filesystem::absolute(model_path).string();
  base.model_size = std::filesystem::file_size(model_path);
  base.model_identity = model_identity(model_path);

  stages_.resize(specs.size());
  stage_busy_.assign(specs.size(), 0.0);
  try {
    for (size_t i = 0; i < specs.size(); ++i) {
      Stage& s = stages_[i];
      s.spec = specs[i];
      try {
        s.link = transport::tcp_connect(s.spec.address, options.connect_timeout, pipeline_frame_limits());
        transport::HandshakeOptions hs;
        hs.capabilities = json{{"role", "coordinator"}}.dump();
        transport::handshake(*s.link, transport::Role::initiator, key, hs);
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", stage_name(i, s.spec), e.what()));
      }
      StageAssignment a = base;
      a.stage = static_cast<int32_t>(i);
      a.first = s.spec.first;
      a.last = s.spec.last;
      a.next = i + 1 < specs.size() ? specs[i + 1].address : "";
      send_json(*s.link, msg::kLoadStage, a.to_json(), options.connect_timeout);
    }
    // Every worker loads and connects to its successor; wait for all of them. A worker without
    // the model first asks for its stage's bytes (need_weights), then answers again.
    std::optional<gguf::GgufFile> file;
    for (size_t i = 0; i < stages_.size(); ++i) {
      Stage& s = stages_[i];
      const std::string name = stage_name(i, s.spec);
      transport::ByteBuffer buffer;
      while (true) {
        std::optional<transport::Message> m;
        try {
          m = s.link->receive(buffer, options.load_timeout);
        } catch (const Error& e) {
          throw Error(fmt::format("{}: {}", name, e.what()));
        }
        if (!m) throw Error(fmt::format("{}: not loaded after {} s", name, options.load_timeout.count() / 1000));
        if (m->type != msg::kStageReady) throw Error(fmt::format("{}: answered message type {}", name, m->type));
        json ready;
        try {
          ready = parse_json(m->payload, "StageReady");
        } catch (const WireError& e) {
          throw Error(fmt::format("{}: {}", name, e.what()));
        }
        if (ready.value("ok", false)) break;
        if (!ready.value("need_weights", false)) {
          throw Error(fmt::format("{}: {}", name, ready.value("error", std::string("failed to load"))));
        }
        if (!file) file.emplace(gguf::GgufFile::open(model_path));
        std::vector<ByteRange> held;
        try {
          held = ranges_from_json(ready.at("have"), base.model_size);
        } catch (const std::exception& e) {
          throw Error(fmt::format("{}: bad list of cached ranges: {}", name, e.what()));
        }
        const std::vector<ByteRange> need = subtract_ranges(stage_byte_ranges(*file, config, s.spec.first, s.spec.last), held);
        const uint64_t total = total_bytes(need);
        if (total > 0) transport::log_line(fmt::format("sending {:.1f} MiB of weights to {}", double(total) / (1 << 20), name));
        int last_tenth = 0;
        send_weights(*s.link, model_path, need, [&](uint64_t sent, uint64_t all) {
          const int tenth = static_cast<int>(10 * sent / std::max<uint64_t>(1, all));
          if (tenth > last_tenth) {
            last_tenth = tenth;
            transport::log_line(fmt::format("{}: weights {}% ({:.1f} / {:.1f} MiB)", name, tenth * 10,
                                            double(sent) / (1 << 20), double(all) / (1 << 20)));
          }
        });
        weight_bytes_sent_ += total;
      }
    }
  } catch (...) {
    for (Stage& s : stages_) {
      if (s.link) s.link->close("the coordinator gave up on this pipeline");
    }
    throw;
  }
  for (size_t i = 0; i < stages_.size(); ++i) {
    Stage& s = stages_[i];
    s.monitor = std::make_unique<transport::LinkMonitor>(
        *s.link, options.heartbeat, [this, i](const std::string& why) { fail(fmt::format("{}: {}", stage_name(i, stages_[i].spec), why)); });
    s.reader = std::thread([this, i] { read_loop(i); });
  }
}

PipelineExecutor::~PipelineExecutor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  for (Stage& s : stages_) {
    if (s.link) s.link->close("the coordinator is done");
  }
  for (Stage& s : stages_) {
    if (s.reader.joinable()) s.reader.join();
    s.monitor.reset();
  }
}

std::string PipelineExecutor::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

void PipelineExecutor::fail(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure_.empty() || closing_) return;
    failure_ = reason;
  }
  transport::log_line(fmt::format("pipeline failed: {}", reason));
  changed_.notify_all();
  for (Stage& s : stages_) {
    if (s.link) s.link->close(reason);
  }
}

void PipelineExecutor::read_loop(size_t i) {
  Stage& s = stages_[i];
  const bool last = i + 1 == stages_.size();
  transport::ByteBuffer buffer;
  try {
    while (true) {
      const auto m = s.link->receive(buffer);
      if (!m) continue;
      if (!last || m->type != msg::kSampled) {
        throw WireError(fmt::format("unexpected message type {}", m->type));
      }
      uint64_t id = 0;
      std::vector<float> seconds;
      std::vector<engine::SampledToken> tokens = decode_sampled(m->payload, n_vocab_, id, &seconds);
      if (seconds.size() != stages_.size()) {
        throw WireError(fmt::format("the step passed {} stages, the pipeline has {}", seconds.size(), stages_.size()));
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        bytes_received_ += m->payload.size();
        for (size_t k = 0; k < seconds.size(); ++k) stage_busy_[k] += seconds[k];
        results_.emplace_back(id, std::move(tokens));
      }
      changed_.notify_all();
    }
  } catch (const Error& e) {
    fail(fmt::format("{}: {}", stage_name(i, s.spec), e.what()));
  }
}

void PipelineExecutor::submit(std::span<const engine::BatchEntry> entries) {
  uint64_t id;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] {
      return !failure_.empty() || next_id_ - next_collect_ < static_cast<uint64_t>(max_in_flight());
    });
    id = next_id_++;
    if (!failure_.empty()) return;  // collect() reports it
  }
  const std::vector<std::byte> head = encode_batch_head(id, entries, 0, options_.wire);
  try {
    stages_.front().link->send(msg::kBatch, head);
  } catch (const Error& e) {
    fail(fmt::format("{}: {}", stage_name(0, stages_.front().spec), e.what()));
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  bytes_sent_ += head.size();
}

std::vector<engine::SampledToken> PipelineExecutor::collect() {
  std::unique_lock<std::mutex> lock(mutex_);
  HEARTH_CHECK(next_collect_ < next_id_, "collect() without a submitted step");
  const uint64_t id = next_collect_++;
  changed_.wait(lock, [&] { return !failure_.empty() || !results_.empty(); });
  changed_.notify_all();  // a submit() may wait for room
  if (!failure_.empty()) throw Error(fmt::format("the pipeline failed: {}", failure_));
  auto [got, tokens] = std::move(results_.front());
  results_.pop_front();
  if (got != id) {
    lock.unlock();
    fail(fmt::format("the last stage answered step {} when step {} was due", got, id));
    throw Error(fmt::format("the pipeline failed: {}", failure_));
  }
  return std::move(tokens);
}

std::vector<double> PipelineExecutor::stage_busy_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stage_busy_;
}

uint64_t PipelineExecutor::bytes_sent() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_sent_;
}

uint64_t PipelineExecutor::bytes_received() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_received_;
}

}  // namespace hearth::shard
