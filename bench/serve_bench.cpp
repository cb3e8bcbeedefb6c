#include "bench/serve_bench.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "core/error.h"

namespace hearth::bench {

// ---- SseParser ----------------------------------------------------------------------------

void SseParser::feed(std::string_view bytes) {
  while (!bytes.empty()) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (bytes.front() == '\n') {
        bytes.remove_prefix(1);
        continue;
      }
    }
    const size_t end = bytes.find_first_of("\r\n");
    if (end == std::string_view::npos) {
      partial_.append(bytes);
      return;
    }
    partial_.append(bytes.substr(0, end));
    skip_lf_ = bytes[end] == '\r';
    bytes.remove_prefix(end + 1);
    line(partial_);
    partial_.clear();
  }
}

void SseParser::finish() {
  if (!partial_.empty()) {
    line(partial_);
    partial_.clear();
  }
  dispatch();
}

void SseParser::line(std::string_view text) {
  if (text.empty()) {
    dispatch();
    return;
  }
  if (text.front() == ':') return;  // comment (keep-alive pings)
  const size_t colon = text.find(':');
  std::string_view field = text.substr(0, colon);
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = text.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) data_.push_back('\n');
    data_.append(value);
    has_data_ = true;
  } else if (field == "event") {
    event_.assign(value);
  }
  // "id" and "retry" mean nothing to a benchmark; unknown fields are ignored by the standard.
}

void SseParser::dispatch() {
  if (has_data_) on_event_(SseEvent{event_, data_});
  event_.clear();
  data_.clear();
  has_data_ = false;
}

// ---- StreamReader -------------------------------------------------------------------------

namespace {

// The message of an OpenAI-style error: {"error": {"message": ...}} or {"error": "..."}, or
// {"message": ...}; otherwise the text itself, shortened.
std::string error_message(const nlohmann::json& j, std::string_view raw) {
  const nlohmann::json* e = &j;
  if (j.is_object() && j.contains("error")) e = &j["error"];
  if (e->is_string()) return e->get<std::string>();
  if (e->is_object() && e->contains("message") && (*e)["message"].is_string()) return (*e)["message"].get<std::string>();
  return std::string(raw.substr(0, 200));
}

std::string error_message(std::string_view raw) {
  const nlohmann::json j = nlohmann::json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::string(raw.substr(0, 200));
  return error_message(j, raw);
}

std::optional<int64_t> json_int(const nlohmann::json& object, const char* key) {
  if (!object.contains(key) || !object[key].is_number_integer()) return std::nullopt;
  return object[key].get<int64_t>();
}

}  // namespace

void StreamReader::on_event(const SseEvent& event, Clock::time_point now) {
  if (!error_.empty()) return;  // the first error is the one that counts
  if (event.event == "error") {
    error_ = error_message(event.data);
    if (error_.empty()) error_ = "error event without a message";
    return;
  }
  if (event.data == "[DONE]") {
    done_ = true;
    return;
  }
  const nlohmann::json j = nlohmann::json::parse(event.data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    error_ = "malformed stream data: " + event.data.substr(0, 200);
    return;
  }
  if (j.contains("error")) {
    error_ = error_message(j, event.data);
    return;
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    const auto& usage = j["usage"];
    if (auto p = json_int(usage, "prompt_tokens")) prompt_tokens_ = p;
    if (auto c = json_int(usage, "completion_tokens")) completion_tokens_ = c;
  }
  if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return;
  const auto& choice = j["choices"][0];
  if (!choice.is_object()) return;
  size_t bytes = 0;
  if (chat_) {
    if (choice.contains("delta") && choice["delta"].is_object()) {
      const auto& delta = choice["delta"];
      // Reasoning models stream their thinking first; it is generated text all the same.
      for (const char* key : {"content", "reasoning_content"}) {
        if (delta.contains(key) && delta[key].is_string()) bytes += delta[key].get_ref<const std::string&>().size();
      }
    }
  } else if (choice.contains("text") && choice["text"].is_string()) {
    bytes = choice["text"].get_ref<const std::string&>().size();
  }
  if (bytes > 0) {
    delta_times_.push_back(now);
    text_bytes_ += bytes;
  }
}

// ---- Statistics ---------------------------------------------------------------------------

namespace {
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

void fill_timings(RequestRecord& record, const StreamReader& reader, Clock::time_point sent, Clock::time_point end) {
  const auto& times = reader.delta_times();
  record.e2e_ms = ms_between(sent, end);
  record.itl_ms.clear();
  if (!times.empty()) {
    record.ttft_ms = ms_between(sent, times.front());
    for (size_t i = 1; i < times.size(); ++i) record.itl_ms.push_back(ms_between(times[i - 1], times[i]));
  }
  record.output_tokens_reported = reader.completion_tokens().has_value();
  record.output_tokens = reader.completion_tokens().value_or(static_cast<int64_t>(times.size()));
  if (reader.prompt_tokens()) {
    record.prompt_tokens = *reader.prompt_tokens();
    record.prompt_tokens_reported = true;
  }
}

std::optional<double> tpot_ms(const RequestRecord& record) {
  if (record.output_tokens < 2) return std::nullopt;
  return (record.e2e_ms - record.ttft_ms) / static_cast<double>(record.output_tokens - 1);
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

Distribution distribution(const std::vector<double>& values) {
  Distribution d;
  d.count = values.size();
  if (values.empty()) return d;
  double sum = 0;
  for (double v : values) sum += v;
  d.mean = sum / static_cast<double>(values.size());
  d.p50 = percentile(values, 50);
  d.p90 = percentile(values, 90);
  d.p99 = percentile(values, 99);
  return d;
}

GoodputBounds parse_goodput(std::string_view spec) {
  GoodputBounds bounds;
  const auto bad = [&](const std::string& why) {
    return Error(fmt::format("--goodput '{}': {} (expected e.g. ttft:500,tpot:50, in milliseconds)", spec, why));
  };
  std::string_view rest = spec;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    const size_t colon = part.find(':');
    if (colon == std::string_view::npos) throw bad(fmt::format("'{}' has no ':'", part));
    const std::string key(part.substr(0, colon));
    const std::string number(part.substr(colon + 1));
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(number, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != number.size() || !(value > 0) || !std::isfinite(value)) {
      throw bad(fmt::format("'{}' is not a positive number of milliseconds", number));
    }
    if (key == "ttft") {
      bounds.ttft_ms = value;
    } else if (key == "tpot") {
      bounds.tpot_ms = value;
    } else {
      throw bad(fmt::format("unknown bound '{}' (ttft, tpot)", key));
    }
  }
  if (!bounds.ttft_ms && !bounds.tpot_ms) throw bad("no bound given");
  return bounds;
}

namespace {
// "HTTP 429: message" for a refused request, the message alone when the HTTP status says nothing.
std::string failure_message(const RequestRecord& r) {
  return r.http_status > 0 && r.http_status != 200 ? fmt::format("HTTP {}: {}", r.http_status, r.error) : r.error;
}
}  // namespace

ServeSummary summarize(const std::vector<RequestRecord>& records, double duration_s, const GoodputBounds& bounds) {
  ServeSummary s;
  s.requests = records.size();
  s.duration_s = duration_s;
  s.bounds = bounds;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& r : records) {
    s.reconnects += r.reconnects > 0 ? 1 : 0;
    if (!r.ok) {
      ++s.failed;
      if (r.http_status == 429 || r.http_status == 503) ++s.refused;
      const std::string message = failure_message(r);
      if (s.first_errors.size() < 5 && std::find(s.first_errors.begin(), s.first_errors.end(), message) == s.first_errors.end()) {
        s.first_errors.push_back(message);
      }
      continue;
    }
    ++s.completed;
    s.input_tokens += r.prompt_tokens;
    s.output_tokens += r.output_tokens;
    s.input_tokens_reported = s.input_tokens_reported && r.prompt_tokens_reported;
    s.output_tokens_reported = s.output_tokens_reported && r.output_tokens_reported;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    const std::optional<double> t = tpot_ms(r);
    if (t) tpot.push_back(*t);
    const bool ttft_ok = !bounds.ttft_ms || r.ttft_ms <= *bounds.ttft_ms;
    const bool tpot_ok = !bounds.tpot_ms || !t || *t <= *bounds.tpot_ms;
    if (ttft_ok && tpot_ok) ++s.good;
  }
  if (s.completed == 0) {
    s.input_tokens_reported = false;
    s.output_tokens_reported = false;
  } else {
    s.mean_input_tokens = static_cast<double>(s.input_tokens) / static_cast<double>(s.completed);
    s.mean_output_tokens = static_cast<double>(s.output_tokens) / static_cast<double>(s.completed);
  }
  if (duration_s > 0) {
    s.request_rate = static_cast<double>(s.completed) / duration_s;
    s.input_token_rate = static_cast<double>(s.input_tokens) / duration_s;
    s.output_token_rate = static_cast<double>(s.output_tokens) / duration_s;
    s.goodput = static_cast<double>(s.good) / duration_s;
  }
  s.ttft = distribution(ttft);
  s.tpot = distribution(tpot);
  s.itl = distribution(itl);
  s.e2e = distribution(e2e);
  return s;
}

// ---- Prompts and arrivals -----------------------------------------------------------------

namespace {

// splitmix64: a small seeded generator whose sequence is the same with every standard library.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Short, frequent English words: each is one token (with its leading space) in the GPT-2,
// Llama, Qwen and Gemma vocabularies, so N words come to about N tokens.
constexpr std::string_view kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "you",   "that",  "it",    "he",    "was",   "for",
    "on",    "are",   "as",    "with",  "his",   "they",  "at",    "be",    "this",  "have",  "from",  "or",
    "one",   "had",   "by",    "word",  "but",   "not",   "what",  "all",   "were",  "we",    "when",  "your",
    "can",   "said",  "there", "use",   "an",    "each",  "which", "she",   "do",    "how",   "their", "if",
    "will",  "up",    "other", "about", "out",   "many",  "then",  "them",  "these", "so",    "some",  "her",
    "would", "make",  "like",  "him",   "into",  "time",  "has",   "look",  "two",   "more",  "write", "go",
    "see",   "number", "no",   "way",   "could", "people", "my",   "than",  "first", "water", "been",  "call",
    "who",   "oil",   "its",   "now",   "find",  "long",  "down",  "day",   "did",   "get",   "come",  "made",
    "may",   "part",  "over",  "new",   "sound", "take",  "only",  "little", "work", "know",  "place", "year",
    "live",  "me",    "back",  "give",  "most",  "very",  "after", "thing", "our",   "just",  "name",  "good",
    "man",   "think", "say",   "great", "where", "help",  "through", "much", "before", "line", "right", "too",
    "mean",  "old",   "any",   "same",  "tell",  "boy",   "follow", "came", "want",  "show",  "also",  "around",
    "form",  "three", "small", "set",   "put",   "end",   "does",  "another", "well", "large", "must",  "big",
    "even",  "such",  "because", "turn", "here", "why",   "ask",   "went",  "men",   "read",  "need",  "land",
    "home",  "us",    "move",  "try",   "kind",  "hand",  "picture", "again", "change", "off", "play",  "spell",
    "air",   "away",  "animal", "house", "point", "page", "letter", "mother", "answer", "found", "study", "still",
};

}  // namespace

std::string synthetic_prompt(int32_t n_words, uint64_t seed) {
  SplitMix64 rng{seed};
  std::string text;
  for (int32_t i = 0; i < n_words; ++i) {
    if (i > 0) text.push_back(' ');
    text.append(kWords[rng.next() % std::size(kWords)]);
  }
  return text;
}

std::vector<double> poisson_gaps(int32_t n, double rate, uint64_t seed) {
  HEARTH_CHECK(rate > 0, "rate {}", rate);
  SplitMix64 rng{seed};
  std::vector<double> gaps;
  gaps.reserve(static_cast<size_t>(std::max(n, 0)));
  for (int32_t i = 0; i < n; ++i) gaps.push_back(-std::log1p(-rng.uniform()) / rate);
  return gaps;
}

std::string request_body(const ServeBenchParams& params, const std::string& prompt) {
  nlohmann::ordered_json body;
  body["model"] = params.model;
  if (params.chat) {
    body["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", prompt}}});
  } else {
    body["prompt"] = prompt;
  }
  body["max_tokens"] = params.output_len;
  body["temperature"] = params.temperature;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  // Not OpenAI's: vLLM, llama.cpp and hearth generate exactly max_tokens with it; strict servers
  // refuse unknown fields, hence --no-ignore-eos.
  if (params.ignore_eos) body["ignore_eos"] = true;
  return body.dump();
}

// ---- HTTP ---------------------------------------------------------------------------------

namespace {

struct Endpoint {
  std::string scheme_host_port;  // "http://127.0.0.1:8080"
  std::string path;              // "/v1/chat/completions"
};

Endpoint parse_endpoint(const std::string& url, bool chat) {
  static const std::regex re(R"(^(https?)://([^/?#]+)([^?#]*)$)", std::regex::icase);
  std::smatch m;
  if (!std::regex_match(url, m, re)) {
    throw Error(fmt::format("--url '{}': expected http://HOST[:PORT][/PREFIX] or https://...", url));
  }
  std::string scheme = m[1].str();
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
  if (scheme == "https") {
    throw Error(fmt::format("--url '{}': this hearth was built with a cpp-httplib without OpenSSL; https is not available", url));
  }
#endif
  std::string prefix = m[3].str();
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (!prefix.ends_with("/v1")) prefix += "/v1";
  return {scheme + "://" + m[2].str(), prefix + (chat ? "/chat/completions" : "/completions")};
}

class Sender {
 public:
  Sender(const Endpoint& endpoint, const ServeBenchParams& params) : endpoint_(endpoint), params_(params), client_(endpoint.scheme_host_port) {
    const auto timeout = std::chrono::duration<double>(params.timeout_s);
    const auto usec = std::chrono::duration_cast<std::chrono::microseconds>(timeout);
    client_.set_keep_alive(true);
    client_.set_tcp_nodelay(true);
    client_.set_connection_timeout(usec);
    client_.set_read_timeout(usec);
    client_.set_write_timeout(usec);
  }

  // Sends one request; times count from `start` (its scheduled arrival in an open loop).
  //
  // A kept-alive connection the server closed while it was idle (its keep-alive timeout, or its
  // requests-per-connection limit, racing with our next request) fails with a Read or Write
  // error before any byte of a response: the request never reached the server's handler, so it
  // is sent again, once, on a new connection. A request on a new connection, or one that got any
  // byte of a response, is never sent twice: its failure is the server's.
  RequestRecord send(const std::string& prompt, Clock::time_point start) {
    for (int attempt = 0;; ++attempt) {
      const bool reused = client_.is_socket_open() != 0;
      bool answered = false;
      RequestRecord record = send_once(prompt, start, answered);
      const bool stale = !record.ok && reused && !answered && record.http_status == 0 && attempt == 0 &&
                         (last_error_ == httplib::Error::Read || last_error_ == httplib::Error::Write) &&
                         Clock::now() < start + std::chrono::duration_cast<Clock::duration>(
                                                    std::chrono::duration<double>(params_.timeout_s));
      if (!stale) {
        record.reconnects = attempt;
        return record;
      }
      client_.stop();  // closes the dead socket; the next send connects afresh
    }
  }

  // The error of the last send_once (Success when it got a whole response).
  httplib::Error last_error() const { return last_error_; }

 private:
  RequestRecord send_once(const std::string& prompt, Clock::time_point start, bool& answered) {
    RequestRecord record;
    record.prompt_tokens = params_.input_len;
    StreamReader reader(params_.chat);
    SseParser parser([&](const SseEvent& e) { reader.on_event(e, Clock::now()); });
    std::string error_body, first_bytes, retry_after;
    bool timed_out = false;
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(params_.timeout_s));

    httplib::Request req;
    req.method = "POST";
    req.path = endpoint_.path;
    // identity: a compressed stream could hold deltas back and distort their timestamps.
    req.headers = {{"Accept", "text/event-stream"}, {"Accept-Encoding", "identity"}};
    if (!params_.api_key.empty()) req.headers.emplace("Authorization", "Bearer " + params_.api_key);
    req.body = request_body(params_, prompt);
    req.set_header("Content-Type", "application/json");
    req.response_handler = [&](const httplib::Response& response) {
      answered = true;
      record.http_status = response.status;
      retry_after = response.get_header_value("Retry-After");
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      answered = true;
      if (record.http_status != 200) {
        error_body.append(data, std::min(n, 4096 - std::min<size_t>(error_body.size(), 4096)));
        return true;
      }
      if (first_bytes.size() < 120) first_bytes.append(data, std::min(n, 120 - first_bytes.size()));
      parser.feed(std::string_view(data, n));
      if (Clock::now() > deadline) {
        timed_out = true;
        return false;
      }
      return true;
    };
    const httplib::Result result = client_.send(req);
    last_error_ = result.error();
    parser.finish();
    const Clock::time_point end = Clock::now();
    fill_timings(record, reader, start, end);

    if (timed_out || (!result && result.error() == httplib::Error::Read && end >= deadline)) {
      record.error = fmt::format("timed out after {} s", params_.timeout_s);
    } else if (!result && record.http_status == 200) {
      // The server accepted the request and then closed or broke the stream.
      record.error = fmt::format("stream cut off after {} content chunk(s): {} error", reader.delta_times().size(),
                                 httplib::to_string(result.error()));
    } else if (!result) {
      record.error = fmt::format("{} ({})", httplib::to_string(result.error()), endpoint_.scheme_host_port);
    } else if (record.http_status != 200) {
      record.error = error_body.empty() ? std::string("(empty body)") : error_message(error_body);
      if (!retry_after.empty()) record.error += fmt::format(" (Retry-After: {})", retry_after);
    } else if (!reader.error().empty()) {
      record.error = "stream error: " + reader.error();
    } else if (reader.delta_times().empty()) {
      record.error = fmt::format("the stream carried no generated text (first bytes: '{}')", first_bytes);
    } else {
      record.ok = true;
    }
    return record;
  }

  const Endpoint& endpoint_;
  const ServeBenchParams& params_;
  httplib::Client client_;
  httplib::Error last_error_ = httplib::Error::Success;
};

uint64_t request_seed(uint64_t seed, uint64_t stream, int32_t index) {
  SplitMix64 rng{seed ^ (stream * 0xD1B54A32D192ED03ull) ^ static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull};
  return rng.next();
}

// Closed loop: `clients` threads, each sending its next request when its last one has ended.
void run_closed_loop(const Endpoint& endpoint, const ServeBenchParams& params, const std::vector<std::string>& prompts,
                     int32_t clients, std::vector<RequestRecord>& records, const std::function<void()>& on_done) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (int32_t c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      Sender sender(endpoint, params);
      for (size_t i = next++; i < prompts.size(); i = next++) {
        records[i] = sender.send(prompts[i], Clock::now());
        on_done();
      }
    });
  }
  for (auto& t : threads) t.join();
}

// Open loop: requests leave at Poisson arrival times whatever the server's state; a new client
// thread (with its own connection) starts whenever every existing one is busy.
void run_open_loop(const Endpoint& endpoint, const ServeBenchParams& params, const std::vector<std::string>& prompts,
                   std::vector<RequestRecord>& records, const std::function<void()>& on_done) {
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<std::pair<size_t, Clock::time_point>> queue;
  size_t idle = 0;
  bool closed = false;
  std::vector<std::thread> threads;
  const auto worker = [&] {
    Sender sender(endpoint, params);
    std::unique_lock lock(mutex);
    for (;;) {
      wake.wait(lock, [&] { return !queue.empty() || closed; });
      if (queue.empty()) return;
      const auto [i, arrival] = queue.front();
      queue.pop_front();
      --idle;
      lock.unlock();
      records[i] = sender.send(prompts[i], arrival);
      on_done();
      lock.lock();
      ++idle;
    }
  };
  const std::vector<double> gaps = poisson_gaps(static_cast<int32_t>(prompts.size()), params.rate, params.seed);
  const Clock::time_point start = Clock::now();
  double t = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    t += gaps[i];
    const auto arrival = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
    std::this_thread::sleep_until(arrival);
    std::lock_guard lock(mutex);
    queue.emplace_back(i, arrival);
    if (queue.size() > idle) {
      ++idle;
      threads.emplace_back(worker);
    }
    wake.notify_one();
  }
  {
    std::lock_guard lock(mutex);
    closed = true;
  }
  wake.notify_all();
  for (auto& thread : threads) thread.join();
}

}  // namespace

ServeBenchResult run_serve_bench(const ServeBenchParams& params, const std::function<void(const std::string&)>& progress) {
  if (params.model.empty()) throw Error("--model is required (the name the server knows the model by)");
  if (params.requests < 1) throw Error(fmt::format("--requests {}: must be at least 1", params.requests));
  if (params.concurrency < 1) throw Error(fmt::format("--concurrency {}: must be at least 1", params.concurrency));
  if (params.rate < 0 || !std::isfinite(params.rate)) throw Error(fmt::format("--rate {}: must be positive", params.rate));
  if (params.input_len < 1) throw Error(fmt::format("--input-len {}: must be at least 1", params.input_len));
  if (params.output_len < 1) throw Error(fmt::format("--output-len {}: must be at least 1", params.output_len));
  if (params.warmup < 0) throw Error(fmt::format("--warmup {}: must not be negative", params.warmup));
  if (!(params.timeout_s > 0)) throw Error(fmt::format("--timeout {}: must be positive", params.timeout_s));
  const Endpoint endpoint = parse_endpoint(params.url, params.chat);
  const auto say = [&](const std::string& line) {
    if (progress) progress(line);
  };

  if (params.warmup > 0) {
    std::vector<std::string> prompts;
    for (int32_t i = 0; i < params.warmup; ++i) prompts.push_back(synthetic_prompt(params.input_len, request_seed(params.seed, 1, i)));
    std::vector<RequestRecord> records(prompts.size());
    say(fmt::format("{} warm-up request(s)...", params.warmup));
    run_closed_loop(endpoint, params, prompts, std::min(params.warmup, params.concurrency), records, [] {});
    for (const auto& r : records) {
      if (!r.ok) say("warm-up request failed: " + failure_message(r));
    }
  }

  std::vector<std::string> prompts;
  for (int32_t i = 0; i < params.requests; ++i) prompts.push_back(synthetic_prompt(params.input_len, request_seed(params.seed, 2, i)));
  std::vector<RequestRecord> records(prompts.size());
  std::atomic<int32_t> done{0};
  std::mutex say_mutex;
  const int32_t step = std::max(1, params.requests / 10);
  const auto on_done = [&] {
    const int32_t n = ++done;
    if (n % step == 0 || n == params.requests) {
      std::lock_guard lock(say_mutex);
      say(fmt::format("{}/{} requests done", n, params.requests));
    }
  };
  say(params.rate > 0 ? fmt::format("{} requests at {} requests/s (Poisson) to {}{}", params.requests, params.rate,
                                    endpoint.scheme_host_port, endpoint.path)
                      : fmt::format("{} requests from {} concurrent clients to {}{}", params.requests, params.concurrency,
                                    endpoint.scheme_host_port, endpoint.path));
  const Clock::time_point start = Clock::now();
  if (params.rate > 0) {
    run_open_loop(endpoint, params, prompts, records, on_done);
  } else {
    run_closed_loop(endpoint, params, prompts, params.concurrency, records, on_done);
  }
  const double duration_s = std::chrono::duration<double>(Clock::now() - start).count();

  ServeBenchResult result;
  result.params = params;
  result.endpoint = endpoint.scheme_host_port + endpoint.path;
  result.summary = summarize(records, duration_s, params.goodput);
  return result;
}

// ---- Reports ------------------------------------------------------------------------------

namespace {

std::string load_description(const ServeBenchParams& p) {
  return p.rate > 0 ? fmt::format("open loop, Poisson arrivals at {} requests/s", p.rate)
                    : fmt::format("closed loop, {} concurrent clients", p.concurrency);
}

std::string bounds_description(const GoodputBounds& b) {
  std::string text;
  if (b.ttft_ms) text += fmt::format("TTFT ≤ {} ms", *b.ttft_ms);
  if (b.tpot_ms) text += fmt::format("{}TPOT ≤ {} ms", text.empty() ? "" : ", ", *b.tpot_ms);
  return text;
}

nlohmann::ordered_json distribution_json(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90}, {"p99", d.p99}};
}

}  // namespace

std::string format_markdown(const ServeBenchResult& result) {
  const ServeSummary& s = result.summary;
  const ServeBenchParams& p = result.params;
  std::string out;
  out += fmt::format("{} · model {} · {} · {} requests · input ≈{} words, output {} tokens{}\n\n", result.endpoint,
                     p.model, load_description(p), p.requests, p.input_len, p.output_len,
                     p.ignore_eos ? " (ignore_eos)" : "");
  out += "| metric | value |\n| --- | ---: |\n";
  out += fmt::format("| completed requests | {} |\n", s.completed);
  out += fmt::format("| failed requests (refused: 429/503) | {} ({}) |\n", s.failed, s.refused);
  out += fmt::format("| resent after a stale keep-alive connection | {} |\n", s.reconnects);
  out += fmt::format("| duration (s) | {:.2f} |\n", s.duration_s);
  out += fmt::format("| requests/s | {:.3f} |\n", s.request_rate);
  out += fmt::format("| mean input tokens | {:.1f}{} |\n", s.mean_input_tokens,
                     s.input_tokens_reported ? "" : " (requested, not reported)");
  out += fmt::format("| mean output tokens | {:.1f}{} |\n", s.mean_output_tokens,
                     s.output_tokens_reported ? "" : " (counted chunks)");
  out += fmt::format("| input tokens/s | {:.1f} |\n", s.input_token_rate);
  out += fmt::format("| output tokens/s | {:.1f} |\n", s.output_token_rate);
  if (s.bounds.ttft_ms || s.bounds.tpot_ms) {
    out += fmt::format("| goodput (requests/s with {}) | {:.3f} ({} of {}) |\n", bounds_description(s.bounds), s.goodput,
                       s.good, s.completed);
  }
  out += "\n| latency (ms) | mean | p50 | p90 | p99 |\n| --- | ---: | ---: | ---: | ---: |\n";
  const auto row = [&](const char* name, const Distribution& d) {
    out += fmt::format("| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n", name, d.mean, d.p50, d.p90, d.p99);
  };
  row("TTFT", s.ttft);
  row("TPOT", s.tpot);
  row("ITL", s.itl);
  row("e2e", s.e2e);
  if (!s.first_errors.empty()) {
    out += "\nfirst errors:\n";
    for (const auto& e : s.first_errors) out += fmt::format("- {}\n", e);
  }
  return out;
}

std::string format_json(const ServeBenchResult& result) {
  const ServeSummary& s = result.summary;
  const ServeBenchParams& p = result.params;
  nlohmann::ordered_json out;
  out["endpoint"] = result.endpoint;
  out["model"] = p.model;
  out["load"] = p.rate > 0 ? "poisson" : "closed";
  if (p.rate > 0) {
    out["rate"] = p.rate;
  } else {
    out["concurrency"] = p.concurrency;
  }
  out["requests"] = p.requests;
  out["input_len"] = p.input_len;
  out["output_len"] = p.output_len;
  out["ignore_eos"] = p.ignore_eos;
  out["seed"] = p.seed;
  out["completed"] = s.completed;
  out["failed"] = s.failed;
  out["refused"] = s.refused;
  out["reconnects"] = s.reconnects;
  out["errors"] = s.first_errors;
  out["duration_s"] = s.duration_s;
  out["request_throughput"] = s.request_rate;
  out["input_tokens"] = s.input_tokens;
  out["output_tokens"] = s.output_tokens;
  out["input_tokens_reported"] = s.input_tokens_reported;
  out["output_tokens_reported"] = s.output_tokens_reported;
  out["mean_input_tokens"] = s.mean_input_tokens;
  out["mean_output_tokens"] = s.mean_output_tokens;
  out["input_token_throughput"] = s.input_token_rate;
  out["output_token_throughput"] = s.output_token_rate;
  out["ttft_ms"] = distribution_json(s.ttft);
  out["tpot_ms"] = distribution_json(s.tpot);
  out["itl_ms"] = distribution_json(s.itl);
  out["e2e_ms"] = distribution_json(s.e2e);
  if (s.bounds.ttft_ms || s.bounds.tpot_ms) {
    nlohmann::ordered_json g;
    g["ttft_ms"] = s.bounds.ttft_ms ? nlohmann::ordered_json(*s.bounds.ttft_ms) : nlohmann::ordered_json(nullptr);
    g["tpot_ms"] = s.bounds.tpot_ms ? nlohmann::ordered_json(*s.bounds.tpot_ms) : nlohmann::ordered_json(nullptr);
    g["good_requests"] = s.good;
    g["requests_per_s"] = s.goodput;
    out["goodput"] = g;
  } else {
    out["goodput"] = nullptr;
  }
  return out.dump(2);
}

}  // namespace hearth::bench
