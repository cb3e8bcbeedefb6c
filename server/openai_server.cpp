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
#include "server/api_request.h"
#include "server/http_server.h"

namespace hearth::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Generated text is whole UTF-8 characters, but a single token's piece (logprobs) may not be.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<uint32_t>(rng()));
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "", const std::string& code = "") {
  res.status = status;
  res.set_content(dump(error_body(message, type, param, code)), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_error(res, e.status, e.what(), e.type, e.param, e.code); }

// OpenAI's usage object; `cached_tokens`: prompt tokens whose KV the prompt cache held.
json usage_json(int32_t prompt_tokens, int32_t completion_tokens, int32_t cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

// The legacy completions `logprobs` object for these tokens (`text_offset` counted from the
// first of them when `with_offsets`).
json completion_logprobs(const engine::Tokenizer& tok, std::span<const engine::SampledToken> sampled, bool with_offsets) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t offset = 0;
  for (const auto& s : sampled) {
    const std::string piece = tok.token_to_piece(s.token, true);
    tokens.push_back(piece);
    token_logprobs.push_back(s.logprob);
    json alternatives = json::object();
    for (const auto& t : s.top) alternatives[tok.token_to_piece(t.token, true)] = t.logprob;
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += piece.size();
  }
  json out = {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}};
  if (with_offsets) out["text_offset"] = offsets;
  return out;
}

// One event of a sequence, passed from the scheduler thread to the HTTP thread.
struct Event {
  int choice = 0;
  bool finished = false;
  std::string text;
  std::optional<engine::SampledToken> sampled;
  engine::SequenceResult result;
};

// The state of one API request (its n choices) shared by the HTTP thread and the scheduler.
struct Exchange {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Event> events;
  int running = 0;  // choices not finished
  std::vector<std::shared_ptr<engine::SequenceHandle>> handles;
  Clock::time_point start = Clock::now();
  std::vector<std::optional<Clock::time_point>> last_token;  // per choice

  void cancel() {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto& h : handles) h->cancel();
  }
};

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

struct OpenAiServer::Impl {
  ServerOptions options;
  HttpServer http;  // idle connections hold no thread and close at once on stop
  ServerMetrics metrics;
  std::atomic<engine::Model*> model{nullptr};
  std::atomic<engine::Scheduler*> scheduler{nullptr};
  std::string fingerprint = fmt::format("hearth-{}", build::kCommit);
  int64_t created = static_cast<int64_t>(std::time(nullptr));

  // Set once the shutdown grace has passed: requests still in flight end (streams with an error
  // event, others with a 503) and free their slots.
  std::atomic<bool> ending{false};
  std::once_flag stopped;

  explicit Impl(ServerOptions o) : options(std::move(o)), http(connection_limits(options)) {}

  void routes();
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  engine::Model* ready(httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  std::vector<engine::Token> prompt_tokens(engine::Model& model, const CompletionRequest& r) const;
  json logprob_entry(const engine::Tokenizer& tok, const engine::SampledToken& s) const;
  std::string endpoint_label(const std::string& path) const;
  json model_object(engine::Model& m) const;
  bool wait_admitted(Exchange& ex, httplib::Response& res);
  void refuse_ending(httplib::Response& res);
};

void OpenAiServer::Impl::refuse_ending(httplib::Response& res) {
  res.set_header("Retry-After", "5");
  send_error(res, 503, "The server is shutting down; retry shortly (on another server if there is one).",
             "unavailable_error", "", "server_shutting_down");
}

// Waits until the request's sequences have left the scheduler's queue for slots (or have
// produced something, or ended). A request still queued after the queue timeout, or when the
// server ends, is withdrawn and refused with 503 + Retry-After.
bool OpenAiServer::Impl::wait_admitted(Exchange& ex, httplib::Response& res) {
  const bool bounded = options.queue_timeout_s > 0;
  const Clock::time_point deadline =
      ex.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(bounded ? options.queue_timeout_s : 0));
  bool timed_out = false;
  {
    std::unique_lock<std::mutex> lock(ex.mutex);
    for (;;) {
      const bool admitted = std::all_of(ex.handles.begin(), ex.handles.end(), [](const auto& h) { return h->admitted(); });
      if (admitted || !ex.events.empty() || ex.running == 0) return true;
      if (ending.load()) break;
      if (bounded && Clock::now() >= deadline) {
        timed_out = true;
        break;
      }
      // Admission has no callback of its own: look again every 20 ms (a first token wakes at once).
      ex.cv.wait_for(lock, std::chrono::milliseconds(20));
    }
  }
  ex.cancel();  // leaves the queue at the scheduler's next step
  if (!timed_out) {
    refuse_ending(res);
    return false;
  }
  metrics.refused();
  res.set_header("Retry-After", "5");
  send_error(res, 503,
             fmt::format("The server is busy: the request waited {:g} s for a slot (--queue-timeout). Retry shortly.",
                         options.queue_timeout_s),
             "server_overloaded", "", "queue_timeout");
  return false;
}

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
  const std::string header = req.get_header_value("Authorization");
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
  for (const char* known : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
                            "/detokenize"}) {
    if (path == known) return path;
  }
  if (path.starts_with("/v1/models/")) return "/v1/models/{id}";
  return "other";
}

std::vector<engine::Token> OpenAiServer::Impl::prompt_tokens(engine::Model& m, const CompletionRequest& r) const {
  if (r.chat) {
    std::string text;
    try {
      text = m.format_chat(r.messages);
    } catch (const Error& e) {  // a conversation the model's template cannot express
      throw ApiError(400, e.what(), "invalid_request_error", "messages");
    }
    return m.tokenize_prompt(text);
  }
  if (r.prompt_tokens) {
    for (engine::Token t : *r.prompt_tokens) {
      if (t >= m.tokenizer().vocab_size()) {
        throw ApiError(400, fmt::format("token id {} is outside the vocabulary of {}", t, m.tokenizer().vocab_size()),
                       "invalid_request_error", "prompt");
      }
    }
    return *r.prompt_tokens;
  }
  return m.tokenize_prompt(*r.prompt_text);
}

json OpenAiServer::Impl::logprob_entry(const engine::Tokenizer& tok, const engine::SampledToken& s) const {
  auto one = [&](engine::Token t, float lp) {
    const std::string piece = tok.token_to_piece(t, /*render_special=*/true);
    json bytes = json::array();
    for (unsigned char c : piece) bytes.push_back(static_cast<int>(c));
    return json{{"token", piece}, {"logprob", lp}, {"bytes", bytes}};
  };
  json entry = one(s.token, s.logprob);
  json top = json::array();
  for (const engine::TokenLogprob& t : s.top) top.push_back(one(t.token, t.logprob));
  entry["top_logprobs"] = top;
  return entry;
}

void OpenAiServer::Impl::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  engine::Model* m = ready(res);
  if (m == nullptr) return;
  if (http.stopping()) {  // a request that arrived on a kept-alive connection while stopping
    refuse_ending(res);
    return;
  }
  engine::Scheduler& sched = *scheduler.load();
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::parse_error& e) {
    send_error(res, 400,
               fmt::format("We could not parse the JSON body of your request: {}", e.what()), "invalid_request_error");
    return;
  }
  CompletionRequest r;
  std::vector<engine::Token> prompt;
  try {
    r = parse_completion_request(body, chat);
    prompt = prompt_tokens(*m, r);
    // Biases apply to logits, of which there are n_vocab; a token the tokenizer cannot render
    // is refused too.
    const int64_t n_vocab = std::min<int64_t>(m->tokenizer().vocab_size(), m->config().n_vocab);
    for (const auto& [token, bias] : r.sampling.logit_bias) {
      if (token >= n_vocab) {
        throw ApiError(400, fmt::format("'logit_bias' names token {}, outside the vocabulary of {}", token, n_vocab),
                       "invalid_request_error", "logit_bias");
      }
    }
    if (prompt.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", chat ? "messages" : "prompt");
    if (static_cast<int32_t>(prompt.size()) >= sched.n_ctx()) {
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your {} resulted in {} "
                                 "tokens. Please reduce the length of the {}.",
                                 sched.n_ctx(), chat ? "messages" : "prompt", prompt.size(), chat ? "messages" : "prompt"),
                     "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");
    }
  } catch (const ApiError& e) {
    send_error(res, e);
    return;
  }

  auto exchange = std::make_shared<Exchange>();
  exchange->last_token.resize(static_cast<size_t>(r.n));
  std::vector<engine::SequenceRequest> sequences;
  const uint64_t base_seed = r.seed_given ? r.sampling.seed : std::random_device{}();
  for (int i = 0; i < r.n; ++i) {
    engine::SequenceRequest s;
    s.prompt = prompt;
    s.options.max_tokens = r.max_tokens;
    s.options.sampling = r.sampling;
    s.options.sampling.seed = base_seed + static_cast<uint64_t>(i);
    s.options.stop = r.stop;
    s.options.ignore_eos = r.ignore_eos;
    if (!r.grammar.empty()) {
      // Constrained decoding: the grammar starts after the prompt and ends at an end token.
      s.options.sampling.grammar = r.grammar;
      s.options.sampling.grammar_prompt_tokens = static_cast<int32_t>(prompt.size());
      s.options.sampling.grammar_end_tokens = m->tokenizer().end_of_generation_tokens();
    }
    std::weak_ptr<Exchange> weak = exchange;
    s.on_token = [this, weak, i](const engine::TokenEvent& e) {
      auto ex = weak.lock();
      if (!ex) return;
      const Clock::time_point now = Clock::now();
      {
        std::lock_guard<std::mutex> lock(ex->mutex);
        auto& last = ex->last_token[static_cast<size_t>(i)];
        if (last) {
          metrics.inter_token_latency(seconds_between(*last, now));
        } else {
          metrics.time_to_first_token(seconds_between(ex->start, now));
        }
        last = now;
        ex->events.push_back({i, false, e.text, e.sampled, {}});
      }
      ex->cv.notify_all();
    };
    s.on_finish = [this, weak, i](const engine::SequenceResult& result) {
      auto ex = weak.lock();
      if (!ex) return;
      {
        std::lock_guard<std::mutex> lock(ex->mutex);
        ex->events.push_back({i, true, {}, std::nullopt, result});
        if (--ex->running == 0) metrics.request_duration(seconds_between(ex->start, Clock::now()));
      }
      ex->cv.notify_all();
    };
    sequences.push_back(std::move(s));
  }
  exchange->running = r.n;
  // No plan can serve the model now: say so at once, rather than queue what cannot run. (While
  // the cluster recovers, requests queue and run once it has.)
  if (const engine::ExecutorHealth h = sched.stats().executor; h.state == engine::ExecutorHealth::State::down) {
    res.set_header("Retry-After", "10");
    send_error(res, 503, fmt::format("The cluster cannot serve the model now: {}", h.reason), "unavailable_error", "",
               "cluster_down");
    return;
  }
  std::optional<std::vector<std::shared_ptr<engine::SequenceHandle>>> handles;
  try {
    handles = sched.submit(std::move(sequences));
  } catch (const Error& e) {
    send_error(res, 400, e.what(), "invalid_request_error", "n");
    return;
  }
  if (!handles) {
    metrics.refused();
    res.set_header("Retry-After", "1");
    send_error(res, 503, "The server is busy: every slot is taken and the queue is full. Retry shortly.",
               "server_overloaded", "", "server_overloaded");
    return;
  }
  {
    std::lock_guard<std::mutex> lock(exchange->mutex);
    exchange->handles = std::move(*handles);
  }
  if (!wait_admitted(*exchange, res)) return;

  const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created_at = static_cast<int64_t>(std::time(nullptr));
  const std::string model_name = options.model_id;
  const engine::Tokenizer& tok = m->tokenizer();
  const int32_t n_prompt = static_cast<int32_t>(prompt.size());
  const std::string object = chat ? "chat.completion" : "text_completion";

  if (!r.stream) {
    std::vector<std::string> texts(static_cast<size_t>(r.n));
    std::vector<std::vector<engine::SampledToken>> sampled(static_cast<size_t>(r.n));
    std::vector<engine::SequenceResult> results(static_cast<size_t>(r.n));
    {
      std::unique_lock<std::mutex> lock(exchange->mutex);
      while (!exchange->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return exchange->running == 0; })) {
        if (ending.load()) {  // past the shutdown grace
          lock.unlock();
          exchange->cancel();
          refuse_ending(res);
          return;
        }
      }
      for (Event& e : exchange->events) {
        const size_t c = static_cast<size_t>(e.choice);
        if (e.finished) {
          results[c] = e.result;
          texts[c] += e.result.tail;
        } else {
          texts[c] += e.text;
          sampled[c].push_back(*e.sampled);
        }
      }
    }
    int32_t completion_tokens = 0, cached_tokens = 0;
    json choices = json::array();
    for (int i = 0; i < r.n; ++i) {
      const auto c = static_cast<size_t>(i);
      if (results[c].finish_reason == "error" || results[c].finish_reason == "cancelled") {
        send_error(res, 500, fmt::format("generation failed: {}", results[c].error.empty() ? results[c].finish_reason : results[c].error),
                   "server_error");
        return;
      }
      completion_tokens += results[c].completion_tokens;
      cached_tokens = std::max(cached_tokens, results[c].cached_tokens);
      json choice = {{"index", i}, {"finish_reason", results[c].finish_reason}, {"logprobs", nullptr}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", texts[c]}};
        if (r.tools) {
          if (std::optional<json> calls = parse_tool_calls(texts[c], *r.tools)) {
            // The answer is a call in the tools convention: OpenAI's tool_calls (or function_call).
            choice["message"]["content"] = nullptr;
            if (r.tools->legacy) {
              choice["message"]["function_call"] = (*calls)[0]["function"];
              choice["finish_reason"] = "function_call";
            } else {
              choice["message"]["tool_calls"] = std::move(*calls);
              choice["finish_reason"] = "tool_calls";
            }
          }
        }
        if (r.logprobs) {
          json content = json::array();
          for (const auto& s : sampled[c]) content.push_back(logprob_entry(tok, s));
          choice["logprobs"] = {{"content", content}};
        }
      } else {
        choice["text"] = texts[c];
        if (r.logprobs) choice["logprobs"] = completion_logprobs(tok, sampled[c], true);
      }
      choices.push_back(choice);
    }
    json out = {{"id", id},
                {"object", object},
                {"created", created_at},
                {"model", model_name},
                {"system_fingerprint", fingerprint},
                {"choices", choices},
                {"usage", usage_json(n_prompt, completion_tokens, cached_tokens)}};
    res.set_content(dump(out), "application/json");
    return;
  }

  // Streamed: Server-Sent Events as OpenAI sends them.
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  auto chunk = [=, this](json choices) {
    json c = {{"id", id},       {"object", chunk_object}, {"created", created_at},
              {"model", model_name}, {"system_fingerprint", fingerprint}, {"choices", std::move(choices)}};
    if (r.include_usage) c["usage"] = nullptr;
    return "data: " + dump(c) + "\n\n";
  };
  auto choice_delta = [chat](int index, const std::string& text) {
    if (chat) return json{{"index", index}, {"delta", {{"content", text}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    return json{{"index", index}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=, this, &tok](size_t /*offset*/, httplib::DataSink& sink) {
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        if (chat) {  // the first delta of each choice carries the role
          for (int i = 0; i < r.n; ++i) {
            json first = {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                          {"finish_reason", nullptr}};
            if (!write(chunk(json::array({first})))) {
              exchange->cancel();
              return false;
            }
          }
        }
        int32_t completion_tokens = 0, cached_tokens = 0;
        int finished = 0;
        Clock::time_point last_write = Clock::now();
        const bool tools_active = chat && r.tools && r.tools->choice != ToolSpec::Choice::None;
        std::vector<std::string> held(static_cast<size_t>(r.n));  // per choice, with tools
        while (finished < r.n) {
          if (ending.load()) {
            // Past the shutdown grace: a last event says why the stream ends here, and the
            // response ends properly (the client sees an error, not a broken connection).
            json err = error_body("The server is shutting down: this stream was ended after the shutdown grace period.",
                                  "server_error", "", "server_shutting_down");
            exchange->cancel();
            if (!write("data: " + dump(err) + "\n\n")) return false;
            sink.done();
            return true;
          }
          std::deque<Event> batch;
          {
            std::unique_lock<std::mutex> lock(exchange->mutex);
            exchange->cv.wait_for(lock, std::chrono::milliseconds(250), [&] { return !exchange->events.empty(); });
            batch.swap(exchange->events);
          }
          if (batch.empty()) {
            // Nothing to say yet (a long prompt): an SSE comment keeps the connection honest, and
            // a failed write tells us the client has gone.
            if (seconds_between(last_write, Clock::now()) > 1.0) {
              if (!write(": keep-alive\n\n")) {
                exchange->cancel();
                return false;
              }
              last_write = Clock::now();
            }
            continue;
          }
          for (Event& e : batch) {
            std::string out;
            if (!e.finished && tools_active) {
              // Held until the end: the answer is either a tool call or content.
              held[static_cast<size_t>(e.choice)] += e.text;
              continue;
            }
            if (!e.finished) {
              if (e.text.empty() && !r.logprobs) continue;
              json delta = choice_delta(e.choice, e.text);
              if (r.logprobs) {
                if (chat) {
                  delta["logprobs"] = {{"content", json::array({logprob_entry(tok, *e.sampled)})}};
                } else {
                  delta["logprobs"] = completion_logprobs(tok, std::span(&*e.sampled, 1), false);
                }
              }
              out = chunk(json::array({delta}));
            } else {
              ++finished;
              completion_tokens += e.result.completion_tokens;
              cached_tokens = std::max(cached_tokens, e.result.cached_tokens);
              if (e.result.finish_reason == "error" || e.result.finish_reason == "cancelled") {
                json err = error_body(fmt::format("generation failed: {}", e.result.error.empty() ? e.result.finish_reason : e.result.error),
                                      "server_error", "", "");
                write("data: " + dump(err) + "\n\n");
                exchange->cancel();
                return false;
              }
              std::string finish_reason = e.result.finish_reason;
              if (tools_active) {
                std::string& text = held[static_cast<size_t>(e.choice)];
                text += e.result.tail;
                if (std::optional<json> calls = parse_tool_calls(text, *r.tools)) {
                  // As OpenAI streams calls: id, type and name with empty arguments, then the
                  // arguments, per call.
                  for (size_t k = 0; k < calls->size(); ++k) {
                    const json& call = (*calls)[k];
                    json head, arguments;
                    if (r.tools->legacy) {
                      head = {{"function_call", {{"name", call["function"]["name"]}, {"arguments", ""}}}};
                      arguments = {{"function_call", {{"arguments", call["function"]["arguments"]}}}};
                    } else {
                      head = {{"tool_calls", json::array({{{"index", k}, {"id", call["id"]}, {"type", "function"},
                                                           {"function", {{"name", call["function"]["name"]}, {"arguments", ""}}}}})}};
                      arguments = {{"tool_calls", json::array({{{"index", k}, {"function", {{"arguments", call["function"]["arguments"]}}}}})}};
                    }
                    for (json* d : {&head, &arguments}) {
                      out += chunk(json::array({json{{"index", e.choice}, {"delta", *d}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
                    }
                  }
                  finish_reason = r.tools->legacy ? "function_call" : "tool_calls";
                } else if (!text.empty()) {
                  out += chunk(json::array({choice_delta(e.choice, text)}));
                }
              } else if (!e.result.tail.empty()) {
                out += chunk(json::array({choice_delta(e.choice, e.result.tail)}));
              }
              json last = chat ? json{{"index", e.choice}, {"delta", json::object()}, {"logprobs", nullptr},
                                      {"finish_reason", finish_reason}}
                               : json{{"index", e.choice}, {"text", ""}, {"logprobs", nullptr},
                                      {"finish_reason", finish_reason}};
              out += chunk(json::array({last}));
            }
            if (!write(out)) {
              exchange->cancel();
              return false;
            }
            last_write = Clock::now();
          }
        }
        std::string tail;
        if (r.include_usage) {
          json u = {{"id", id},
                    {"object", chunk_object},
                    {"created", created_at},
                    {"model", model_name},
                    {"system_fingerprint", fingerprint},
                    {"choices", json::array()},
                    {"usage", usage_json(n_prompt, completion_tokens, cached_tokens)}};
          tail += "data: " + dump(u) + "\n\n";
        }
        tail += "data: [DONE]\n\n";
        if (!write(tail)) return false;
        sink.done();
        return true;
      },
      [exchange](bool success) {
        if (!success) exchange->cancel();  // the client went away: free the slots
      });
}

void OpenAiServer::Impl::routes() {
  http.set_payload_max_length(options.max_body_bytes);
  http.set_read_timeout(30);
  http.set_write_timeout(30);
  http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "OPTIONS") {  // CORS preflight from browser clients
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.status = 204;
      return httplib::Server::HandlerResponse::Handled;
    }
    const bool open = req.path == "/health" || req.path == "/metrics";
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
