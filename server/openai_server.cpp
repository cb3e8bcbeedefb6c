#include "server/openai_server.h"

#include <httplib.h>
#include <openssl/crypto.h>

#include <chrono>
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>

#include "core/build_info.h"
#include "core/error.h"
#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

// Connections the kernel holds for accept(): a burst of clients (100 at once) must not overflow
// it; the poller takes them off as fast as they come.
constexpr int kListenBacklog = 1024;

ConnectionLimits connection_limits(const ServerOptions& o) {
  ConnectionLimits l;
  l.max_connections = static_cast<size_t>(std::max(1, o.max_connections));
  l.request_threads = static_cast<size_t>(std::max(1, o.http_threads));
  l.idle_timeout_ms = static_cast<int>(std::clamp(o.idle_timeout_s * 1000.0, 1.0, 86'400'000.0));
  l.head_timeout_ms = 30'000;
  return l;
}

}  // namespace

OpenAiServer::Impl::Impl(ServerOptions o)
    : options(std::move(o)), http(connection_limits(options)), fingerprint(fmt::format("hearth-{}", build::kCommit)),
      created(static_cast<int64_t>(std::time(nullptr))) {
  init_responses();
}

OpenAiServer::Impl::~Impl() = default;

// OpenAI's model object, with hearth's details under "meta" (as llama.cpp's server adds them).
json OpenAiServer::Impl::model_object(engine::Model& m) const {
  return {{"id", options.model_id},
          {"object", "model"},
          {"created", created},
          {"owned_by", "hearth"},
          {"meta", {{"n_ctx", scheduler.load()->n_ctx()}, {"n_vocab", m.config().n_vocab}, {"arch", m.config().arch}}}};
}

bool OpenAiServer::Impl::authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options.api_key.empty()) return true;
  // OpenAI clients send "Authorization: Bearer KEY"; Anthropic's send "x-api-key: KEY".
  std::string header = req.get_header_value("Authorization");
  if (header.empty() && req.has_header("x-api-key")) header = "Bearer " + req.get_header_value("x-api-key");
  const std::string prefix = "Bearer ";
  if (header.empty()) {
    send_error(res, 401, "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer KEY'.",
               "invalid_request_error", "", "invalid_api_key");
    return false;
  }
  const std::string given = header.starts_with(prefix) ? header.substr(prefix.size()) : header;
  const bool same = given.size() == options.api_key.size() &&
                    CRYPTO_memcmp(given.data(), options.api_key.data(), given.size()) == 0;
  if (!same) {
    send_error(res, 401, "Incorrect API key provided.", "invalid_request_error", "", "invalid_api_key");
    return false;
  }
  return true;
}

engine::Model* OpenAiServer::Impl::ready(httplib::Response& res) {
  engine::Model* m = model.load();
  if (m == nullptr) {
    res.set_header("Retry-After", "5");
    send_error(res, 503, "The model is still loading; retry shortly.", "unavailable_error", "", "model_loading");
  }
  return m;
}

std::string OpenAiServer::Impl::endpoint_label(const std::string& path) const {
  for (const char* known : {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/models",
                            "/v1/cluster", "/", "/health", "/metrics", "/tokenize", "/detokenize"}) {
    if (path == known) return path;
  }
  if (path.starts_with("/v1/models/")) return "/v1/models/{id}";
  if (path.starts_with("/v1/responses/")) return "/v1/responses/{id}";
  return "other";
}

void OpenAiServer::Impl::routes() {
  http.set_payload_max_length(options.max_body_bytes);
  http.set_read_timeout(30);
  http.set_write_timeout(30);
  http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "OPTIONS") {  // CORS preflight from browser clients
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, x-api-key, anthropic-version");
      res.status = 204;
      return httplib::Server::HandlerResponse::Handled;
    }
    const bool open = req.path == "/health" || req.path == "/metrics" || req.path == "/" || req.path == "/v1/cluster";
    if (!open && !authorized(req, res)) return httplib::Server::HandlerResponse::Handled;
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // already an OpenAI error
    if (res.status == 404) {
      send_error(res, 404, fmt::format("Unknown request URL: {} {}.", req.method, req.path), "invalid_request_error", "",
                 "unknown_url");
    } else if (res.status == 413) {
      send_error(res, 413, "The request body is too large.", "invalid_request_error", "", "request_too_large");
    } else {
      send_error(res, res.status, fmt::format("HTTP error {}", res.status), "invalid_request_error");
    }
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, 500, fmt::format("internal error: {}", what), "server_error");
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.request_finished(endpoint_label(req.path), res.status);
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (model.load() == nullptr) {
      res.set_header("Retry-After", "5");
      json body = error_body("The model is still loading.", "unavailable_error", "", "model_loading");
      body["status"] = "loading";
      res.status = 503;
      res.set_content(dump(body), "application/json");
      return;
    }
    // A cluster that lost a node says so while it re-plans and replays (503, recovering), and
    // when no plan can serve (503, down, with what is missing) until a node comes back.
    json body = {{"status", "ok"}};
    if (engine::Scheduler* sch = scheduler.load()) {
      const engine::ExecutorHealth h = sch->stats().executor;
      if (h.state == engine::ExecutorHealth::State::recovering) {
        res.set_header("Retry-After", "2");
        body = error_body(fmt::format("A node of the cluster was lost; re-planning onto the nodes left (requests wait "
                                      "and resume): {}",
                                      h.reason),
                          "unavailable_error", "", "recovering");
        body["status"] = "recovering";
        res.status = 503;
      } else if (h.state == engine::ExecutorHealth::State::down) {
        res.set_header("Retry-After", "10");
        body = error_body(fmt::format("The cluster cannot serve the model now: {}", h.reason), "unavailable_error", "",
                          "cluster_down");
        body["status"] = "down";
        res.status = 503;
      }
      if (!h.plan.empty()) body["plan"] = h.plan;
      if (!h.nodes.empty()) {
        json nodes = json::array();
        for (const auto& [address, role] : h.nodes) nodes.push_back({{"address", address}, {"role", role}});
        body["nodes"] = nodes;
      }
    }
    res.set_content(dump(body), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    ServerMetrics::Snapshot s;
    if (engine::Scheduler* sch = scheduler.load()) {
      const engine::SchedulerStats st = sch->stats();
      s = {st.running, st.waiting, st.slots, st.kv_positions_used, st.kv_positions_total, st.prompt_tokens,
           st.generated_tokens, st.steps, st.busy_seconds, st.stage_busy_seconds, true};
      s.executor_state = engine::executor_state_name(st.executor.state);
      s.stage_failures = st.executor.stage_failures;
      s.recoveries = st.executor.recoveries;
      s.rebalances = st.executor.rebalances;
      s.rebuild_seconds = st.executor.rebuild_seconds;
      s.last_rebuild_seconds = st.executor.last_rebuild_seconds;
      s.replayed_sequences = st.replayed_sequences;
      s.replayed_tokens = st.replayed_tokens;
      s.prefix_cache_hits = st.prefix_cache_hits;
      s.prefix_cache_tokens = st.prefix_cache_tokens;
    }
    res.set_content(metrics.render(s), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    engine::Model* m = ready(res);
    if (m == nullptr) return;
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_object(*m)})}}), "application/json");
  });
  // One model by id (OpenAI's retrieve): the served one, or 404 as OpenAI answers an unknown id.
  http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    engine::Model* m = ready(res);
    if (m == nullptr) return;
    const std::string id = req.matches[1];
    if (id != options.model_id) {
      send_error(res, 404, fmt::format("The model '{}' does not exist: this server serves '{}'.", id, options.model_id),
                 "invalid_request_error", "model", "model_not_found");
      return;
    }
    res.set_content(dump(model_object(*m)), "application/json");
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); });
  // The chat and completions routes without the /v1 prefix, as llama.cpp's server also accepts.
  http.Post("/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); });
  http.Post("/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); });
  // OpenAI's Responses API (responses_api.cpp) and Anthropic's Messages API (messages_api.cpp).
  http.Post("/v1/responses", [this](const httplib::Request& req, httplib::Response& res) { responses(req, res); });
  http.Get(R"(/v1/responses/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) { get_response(req, res); });
  http.Delete(R"(/v1/responses/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) { delete_response(req, res); });
  http.Post("/v1/messages", [this](const httplib::Request& req, httplib::Response& res) { messages(req, res); });
  // The dashboard (dashboard.cpp): the page and the cluster's state as JSON; open, as /health is.
  http.Get("/", [this](const httplib::Request& req, httplib::Response& res) { dashboard(req, res); });
  http.Get("/v1/cluster", [this](const httplib::Request& req, httplib::Response& res) { cluster(req, res); });

  http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    engine::Model* m = ready(res);
    if (m == nullptr) return;
    try {
      const json body = json::parse(req.body);
      if (!body.is_object() || !body.contains("content") || !body["content"].is_string()) {
        throw ApiError(400, "'content' must be a string", "invalid_request_error", "content");
      }
      const bool add_special = body.value("add_special", false);
      const bool with_pieces = body.value("with_pieces", false);
      const std::vector<engine::Token> tokens =
          m->tokenizer().encode(body["content"].get<std::string>(), add_special, /*parse_special=*/true);
      json out = json::array();
      for (engine::Token t : tokens) {
        if (with_pieces) {
          out.push_back({{"id", t}, {"piece", m->tokenizer().token_to_piece(t, true)}});
        } else {
          out.push_back(t);
        }
      }
      res.set_content(dump(json{{"tokens", out}}), "application/json");
    } catch (const json::exception& e) {
      send_error(res, 400, fmt::format("invalid request: {}", e.what()), "invalid_request_error");
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });
  http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    engine::Model* m = ready(res);
    if (m == nullptr) return;
    try {
      const json body = json::parse(req.body);
      if (!body.is_object() || !body.contains("tokens") || !body["tokens"].is_array()) {
        throw ApiError(400, "'tokens' must be an array of token ids", "invalid_request_error", "tokens");
      }
      std::vector<engine::Token> tokens;
      for (const json& t : body["tokens"]) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= m->tokenizer().vocab_size()) {
          throw ApiError(400, fmt::format("'{}' is not a token id of this model (0..{})", t.dump(), m->tokenizer().vocab_size() - 1),
                         "invalid_request_error", "tokens");
        }
        tokens.push_back(t.get<engine::Token>());
      }
      res.set_content(dump(json{{"content", m->tokenizer().decode(tokens)}}), "application/json");
    } catch (const json::exception& e) {
      send_error(res, 400, fmt::format("invalid request: {}", e.what()), "invalid_request_error");
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });
}

OpenAiServer::OpenAiServer(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) { impl_->routes(); }

OpenAiServer::~OpenAiServer() { stop(); }

int OpenAiServer::bind() {
  const ServerOptions& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->http.bind_to_any_port(o.host);
    if (port <= 0) throw Error(fmt::format("cannot listen on {}: no free port", o.host));
    impl_->http.set_listen_backlog(kListenBacklog);
    return port;
  }
  if (!impl_->http.bind_to_port(o.host, o.port)) {
    throw Error(fmt::format("cannot listen on {}:{} (in use, or not an address of this machine)", o.host, o.port));
  }
  impl_->http.set_listen_backlog(kListenBacklog);
  return o.port;
}

void OpenAiServer::attach(engine::Model& model, engine::Scheduler& scheduler) {
  Impl& i = *impl_;
  const char* source = "--tool-format";
  if (i.options.tool_format.empty() || i.options.tool_format == "auto") {
    i.tool_format = ToolFormat::Generic;
    source = "the chat template has no tool format of its own";
    if (const gguf::Value* t = model.file().find("tokenizer.chat_template")) {
      if (const auto* text = t->get_if<std::string_view>()) {
        i.tool_format = detect_tool_format(*text);
        if (i.tool_format != ToolFormat::Generic) source = "from the chat template";
      }
    }
  } else {
    const std::optional<ToolFormat> f = tool_format_from_name(i.options.tool_format);
    if (!f) throw Error(fmt::format("--tool-format {}: expected auto, generic, hermes or llama3", i.options.tool_format));
    i.tool_format = *f;
  }
  std::fprintf(stderr, "hearth: tool calls in the %s format (%s)\n", std::string(tool_format_name(i.tool_format)).c_str(), source);
  impl_->scheduler.store(&scheduler);
  impl_->model.store(&model);
}

bool OpenAiServer::run() { return impl_->http.listen_after_bind(); }

void OpenAiServer::stop() {
  std::call_once(impl_->stopped, [this] {
    Impl& i = *impl_;
    const Clock::time_point start = Clock::now();
    i.http.shutdown();
    const auto grace = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::max(0.0, i.options.shutdown_grace_s)));
    if (!i.http.wait_drained(start + grace)) {
      const HttpServer::Counts c = i.http.counts();
      std::fprintf(stderr, "hearth: %zu request(s) still running after the %g s shutdown grace: ending them\n",
                   c.serving + c.waiting, i.options.shutdown_grace_s);
      i.ending.store(true);
    }
    i.http.join();
  });
}

}  // namespace hearth::server
