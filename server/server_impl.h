// The inside of OpenAiServer, shared by the files that implement its endpoints (private to
// server/): openai_server.cpp (lifecycle, routes, models, health, metrics, tokenize),
// generation.cpp (one request's sequences through the scheduler: validation, submission,
// admission, collection, the streaming loop), chat_api.cpp (/v1/chat/completions and
// /v1/completions), responses_api.cpp (/v1/responses) and messages_api.cpp (/v1/messages).
//
// Every endpoint follows the same three steps: parse and validate its body into a
// CompletionRequest (api_request.h, responses_request.h, messages_request.h), start the
// generation (Impl::start), then render it whole (Impl::collect) or stream it (Impl::pump) in
// its own wire format.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "server/api_request.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_server.h"

namespace hearth::server {

using Clock = std::chrono::steady_clock;

// Generated text is whole UTF-8 characters, but a single token's piece (logprobs) may not be.
std::string dump(const nlohmann::ordered_json& j);
double seconds_between(Clock::time_point a, Clock::time_point b);
std::string random_id(const char* prefix);
void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "", const std::string& code = "");
void send_error(httplib::Response& res, const ApiError& e);
// One server-sent event: `data: JSON`, preceded by `event: NAME` when a name is given (the
// Responses and Messages APIs name their events; chat completions do not).
std::string sse(const nlohmann::ordered_json& data, const std::string& event = "");

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
  int n = 1;        // choices
  int32_t n_prompt = 0;
  std::vector<std::shared_ptr<engine::SequenceHandle>> handles;
  Clock::time_point start = Clock::now();
  std::vector<std::optional<Clock::time_point>> last_token;  // per choice

  void cancel() {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto& h : handles) h->cancel();
  }
};

// One choice of a request, collected whole.
struct ChoiceResult {
  std::string text;
  std::vector<engine::SampledToken> sampled;
  engine::SequenceResult result;
};

// How a stream's event loop ended.
enum class PumpEnd {
  done,    // every choice finished; the caller writes its closing events
  ended,   // past the shutdown grace: the ending event was written and the stream closed
  failed,  // the client went away, or a handler asked to stop: the stream is abandoned
};

struct OpenAiServer::Impl {
  ServerOptions options;
  HttpServer http;  // idle connections hold no thread and close at once on stop
  ServerMetrics metrics;
  std::atomic<engine::Model*> model{nullptr};
  std::atomic<engine::Scheduler*> scheduler{nullptr};
  std::string fingerprint;
  int64_t created = 0;
  ToolFormat tool_format = ToolFormat::Generic;  // the model's (attach(): --tool-format or its template)

  // Set once the shutdown grace has passed: requests still in flight end (streams with an error
  // event, others with a 503) and free their slots.
  std::atomic<bool> ending{false};
  std::once_flag stopped;

  // Responses kept for `previous_response_id` (responses_api.cpp), bounded.
  struct StoredResponses;
  std::shared_ptr<StoredResponses> stored;  // shared_ptr: the type is complete in responses_api.cpp only
  void init_responses();

  explicit Impl(ServerOptions o);
  ~Impl();

  void routes();
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  engine::Model* ready(httplib::Response& res);
  std::string endpoint_label(const std::string& path) const;
  nlohmann::ordered_json model_object(engine::Model& m) const;
  void refuse_ending(httplib::Response& res);

  // --- generation.cpp ---
  // The model, when it can take a generation request now; otherwise the 503 is sent.
  engine::Model* accepting(httplib::Response& res);
  // The request body as JSON; nullopt after a 400 for a body that is not JSON.
  std::optional<nlohmann::ordered_json> parse_body(const httplib::Request& req, httplib::Response& res);
  // The prompt's tokens: the chat template over the messages, or the completion prompt.
  std::vector<engine::Token> prompt_tokens(engine::Model& m, const CompletionRequest& r) const;
  // Checks the prompt (`prompt_param` names it in errors) and logit_bias against the model,
  // submits the request's n sequences and waits until they hold slots. Throws ApiError (400)
  // for a bad prompt; returns nullptr after sending a 503 (busy, queue timeout, cluster down,
  // shutting down).
  std::shared_ptr<Exchange> start(engine::Model& m, const CompletionRequest& r, std::vector<engine::Token> prompt,
                                  const std::string& prompt_param, httplib::Response& res);
  bool wait_admitted(Exchange& ex, httplib::Response& res);
  // Waits for every choice to finish; nullopt after sending the error (past the shutdown
  // grace: 503; a sequence that failed: 500).
  std::optional<std::vector<ChoiceResult>> collect(Exchange& ex, httplib::Response& res);
  // The event loop of a stream: every event goes to `on_event`, which returns what to write
  // (empty: nothing) or nullopt to abandon the stream (it wrote its error itself through the
  // returned text first, if any). While nothing happens, SSE comments keep the connection
  // honest and notice a client that left; past the shutdown grace, `on_ending()` is written
  // and the stream closed.
  PumpEnd pump(Exchange& ex, httplib::DataSink& sink,
               const std::function<std::optional<std::string>(Event&)>& on_event,
               const std::function<std::string()>& on_ending);
  nlohmann::ordered_json logprob_entry(const engine::Tokenizer& tok, const engine::SampledToken& s) const;

  // --- chat_api.cpp ---
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  // --- responses_api.cpp ---
  void responses(const httplib::Request& req, httplib::Response& res);
  void get_response(const httplib::Request& req, httplib::Response& res);
  void delete_response(const httplib::Request& req, httplib::Response& res);
  // --- messages_api.cpp ---
  void messages(const httplib::Request& req, httplib::Response& res);
  // --- dashboard.cpp ---
  void dashboard(const httplib::Request& req, httplib::Response& res);
  void cluster(const httplib::Request& req, httplib::Response& res);
  struct Rates {  // /v1/cluster's rates, over the time between two calls
    std::mutex mutex;
    Clock::time_point at{};
    uint64_t generated = 0;
    std::vector<double> busy;
    double tokens_per_second = 0;
    std::vector<double> busy_share;
  } rates;
};

// Streams a response produced by `provider` (the body of a content provider) as server-sent
// events, freeing the exchange's slots when the client goes away.
void stream_events(httplib::Response& res, const std::shared_ptr<Exchange>& exchange,
                   std::function<bool(httplib::DataSink&)> provider);

}  // namespace hearth::server
