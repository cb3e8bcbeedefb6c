// One API request's sequences through the scheduler, whatever the endpoint: validation against
// the model, submission, admission, collection of a whole answer, and the loop of a stream.
#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "core/error.h"
#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<uint32_t>(rng()));
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param, const std::string& code) {
  res.status = status;
  res.set_content(dump(error_body(message, type, param, code)), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_error(res, e.status, e.what(), e.type, e.param, e.code); }

std::string sse(const json& data, const std::string& event) {
  std::string out;
  if (!event.empty()) out = "event: " + event + "\n";
  return out + "data: " + dump(data) + "\n\n";
}

void OpenAiServer::Impl::refuse_ending(httplib::Response& res) {
  res.set_header("Retry-After", "5");
  send_error(res, 503, "The server is shutting down; retry shortly (on another server if there is one).",
             "unavailable_error", "", "server_shutting_down");
}

engine::Model* OpenAiServer::Impl::accepting(httplib::Response& res) {
  engine::Model* m = ready(res);
  if (m == nullptr) return nullptr;
  if (http.stopping()) {  // a request that arrived on a kept-alive connection while stopping
    refuse_ending(res);
    return nullptr;
  }
  return m;
}

std::optional<json> OpenAiServer::Impl::parse_body(const httplib::Request& req, httplib::Response& res) {
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    send_error(res, 400, fmt::format("We could not parse the JSON body of your request: {}", e.what()),
               "invalid_request_error");
    return std::nullopt;
  }
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

std::shared_ptr<Exchange> OpenAiServer::Impl::start(engine::Model& m, const CompletionRequest& r,
                                                    std::vector<engine::Token> prompt, const std::string& prompt_param,
                                                    httplib::Response& res) {
  engine::Scheduler& sched = *scheduler.load();
  // Biases apply to logits, of which there are n_vocab; a token the tokenizer cannot render is
  // refused too.
  const int64_t n_vocab = std::min<int64_t>(m.tokenizer().vocab_size(), m.config().n_vocab);
  for (const auto& [token, bias] : r.sampling.logit_bias) {
    if (token >= n_vocab) {
      throw ApiError(400, fmt::format("'logit_bias' names token {}, outside the vocabulary of {}", token, n_vocab),
                     "invalid_request_error", "logit_bias");
    }
  }
  if (prompt.empty()) throw ApiError(400, "the prompt is empty", "invalid_request_error", prompt_param);
  if (static_cast<int32_t>(prompt.size()) >= sched.n_ctx()) {
    throw ApiError(400,
                   fmt::format("This model's maximum context length is {} tokens. However, your {} resulted in {} "
                               "tokens. Please reduce the length of the {}.",
                               sched.n_ctx(), prompt_param, prompt.size(), prompt_param),
                   "invalid_request_error", prompt_param, "context_length_exceeded");
  }

  auto exchange = std::make_shared<Exchange>();
  exchange->n = r.n;
  exchange->n_prompt = static_cast<int32_t>(prompt.size());
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
      s.options.sampling.grammar_end_tokens = m.tokenizer().end_of_generation_tokens();
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
    return nullptr;
  }
  std::optional<std::vector<std::shared_ptr<engine::SequenceHandle>>> handles;
  try {
    handles = sched.submit(std::move(sequences));
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error", "n");
  }
  if (!handles) {
    metrics.refused();
    res.set_header("Retry-After", "1");
    send_error(res, 503, "The server is busy: every slot is taken and the queue is full. Retry shortly.",
               "server_overloaded", "", "server_overloaded");
    return nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(exchange->mutex);
    exchange->handles = std::move(*handles);
  }
  if (!wait_admitted(*exchange, res)) return nullptr;
  return exchange;
}

std::optional<std::vector<ChoiceResult>> OpenAiServer::Impl::collect(Exchange& ex, httplib::Response& res) {
  std::vector<ChoiceResult> out(static_cast<size_t>(ex.n));
  {
    std::unique_lock<std::mutex> lock(ex.mutex);
    while (!ex.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return ex.running == 0; })) {
      if (ending.load()) {  // past the shutdown grace
        lock.unlock();
        ex.cancel();
        refuse_ending(res);
        return std::nullopt;
      }
    }
    for (Event& e : ex.events) {
      ChoiceResult& c = out[static_cast<size_t>(e.choice)];
      if (e.finished) {
        c.result = e.result;
        c.text += e.result.tail;
      } else {
        c.text += e.text;
        c.sampled.push_back(*e.sampled);
      }
    }
  }
  for (const ChoiceResult& c : out) {
    if (c.result.finish_reason == "error" || c.result.finish_reason == "cancelled") {
      send_error(res, 500, fmt::format("generation failed: {}", c.result.error.empty() ? c.result.finish_reason : c.result.error),
                 "server_error");
      return std::nullopt;
    }
  }
  return out;
}

PumpEnd OpenAiServer::Impl::pump(Exchange& ex, httplib::DataSink& sink,
                                 const std::function<std::optional<std::string>(Event&)>& on_event,
                                 const std::function<std::string()>& on_ending) {
  auto write = [&](const std::string& s) { return s.empty() || sink.write(s.data(), s.size()); };
  int finished = 0;
  Clock::time_point last_write = Clock::now();
  while (finished < ex.n) {
    if (ending.load()) {
      // Past the shutdown grace: a last event says why the stream ends here, and the response
      // ends properly (the client sees an error, not a broken connection).
      ex.cancel();
      if (!write(on_ending())) return PumpEnd::failed;
      sink.done();
      return PumpEnd::ended;
    }
    std::deque<Event> batch;
    {
      std::unique_lock<std::mutex> lock(ex.mutex);
      ex.cv.wait_for(lock, std::chrono::milliseconds(250), [&] { return !ex.events.empty(); });
      batch.swap(ex.events);
    }
    if (batch.empty()) {
      // Nothing to say yet (a long prompt): an SSE comment keeps the connection honest, and a
      // failed write tells us the client has gone.
      if (seconds_between(last_write, Clock::now()) > 1.0) {
        if (!write(": keep-alive\n\n")) {
          ex.cancel();
          return PumpEnd::failed;
        }
        last_write = Clock::now();
      }
      continue;
    }
    for (Event& e : batch) {
      if (e.finished) ++finished;
      std::optional<std::string> out = on_event(e);
      if (!out || !write(*out)) {
        ex.cancel();
        return PumpEnd::failed;
      }
      if (!out->empty()) last_write = Clock::now();
    }
  }
  return PumpEnd::done;
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

void stream_events(httplib::Response& res, const std::shared_ptr<Exchange>& exchange,
                   std::function<bool(httplib::DataSink&)> provider) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [provider = std::move(provider)](size_t /*offset*/, httplib::DataSink& sink) { return provider(sink); },
      [exchange](bool success) {
        if (!success) exchange->cancel();  // the client went away: free the slots
      });
}

}  // namespace hearth::server
