// `hearth bench serve`: a load generator for any OpenAI-compatible HTTP endpoint (hearth serve,
// llama.cpp's server, vLLM, ...). It speaks only the public OpenAI API: streamed
// /v1/chat/completions or /v1/completions with `stream_options.include_usage`, and measures
// what a client sees — TTFT, TPOT, ITL, end-to-end latency, request and token throughput,
// goodput under latency bounds — either closed-loop (C clients, each sending its next request
// when the last one ends) or open-loop (Poisson arrivals at R requests/s).
//
// Pieces are separate so they can be tested without a network: `SseParser` (bytes → events),
// `StreamReader` (events → one request's timestamps, tokens, usage or error), `summarize`
// (per-request records → the report), and `run_serve_bench` (threads and HTTP).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hearth::bench {

// ---- Server-sent events -------------------------------------------------------------------

struct SseEvent {
  std::string event;  // the `event:` field; empty means "message"
  std::string data;   // `data:` lines joined with '\n'
};

// Incremental parser of a text/event-stream (WHATWG HTML §9.2): bytes may arrive split
// anywhere (inside a line, between '\r' and '\n') or with several events in one chunk. Lines
// end with "\n", "\r\n" or "\r"; lines starting with ':' are comments; a blank line dispatches
// the event if it has data. `finish()` dispatches an event left unterminated at the end of the
// stream (the standard drops it; a benchmark would rather count a server's last token).
class SseParser {
 public:
  using Callback = std::function<void(const SseEvent&)>;
  explicit SseParser(Callback on_event) : on_event_(std::move(on_event)) {}

  void feed(std::string_view bytes);
  void finish();

 private:
  void line(std::string_view text);
  void dispatch();

  Callback on_event_;
  std::string partial_;       // bytes of the current line not yet ended
  bool skip_lf_ = false;      // the previous chunk ended with '\r': a leading '\n' belongs to it
  std::string event_;
  std::string data_;
  bool has_data_ = false;
};

// ---- One streamed request -----------------------------------------------------------------

using Clock = std::chrono::steady_clock;

// Interprets the events of one streamed completion: content deltas (chat `delta.content` or
// `delta.reasoning_content`, completions `text`) with the time each arrived, the `usage` object,
// `[DONE]`, and errors (an `error` object in the data or an `event: error`).
class StreamReader {
 public:
  explicit StreamReader(bool chat) : chat_(chat) {}

  void on_event(const SseEvent& event, Clock::time_point now);

  const std::vector<Clock::time_point>& delta_times() const { return delta_times_; }
  std::optional<int64_t> prompt_tokens() const { return prompt_tokens_; }
  std::optional<int64_t> completion_tokens() const { return completion_tokens_; }
  bool done() const { return done_; }
  const std::string& error() const { return error_; }  // empty: none
  size_t text_bytes() const { return text_bytes_; }

 private:
  bool chat_;
  std::vector<Clock::time_point> delta_times_;
  std::optional<int64_t> prompt_tokens_;
  std::optional<int64_t> completion_tokens_;
  bool done_ = false;
  std::string error_;
  size_t text_bytes_ = 0;
};

// ---- Records and statistics ---------------------------------------------------------------

// What one request produced, in milliseconds from the moment it was sent.
struct RequestRecord {
  bool ok = false;
  int http_status = 0;         // 0: no HTTP response (connection error, timeout)
  std::string error;           // empty when ok
  double ttft_ms = 0;          // first non-empty content delta
  double e2e_ms = 0;           // last byte of the stream
  std::vector<double> itl_ms;  // gaps between consecutive content deltas
  int64_t prompt_tokens = 0;   // usage.prompt_tokens, else the requested input length
  bool prompt_tokens_reported = false;
  int64_t output_tokens = 0;   // usage.completion_tokens, else the number of content deltas
  bool output_tokens_reported = false;
  int reconnects = 0;          // sent again on a new connection: the kept-alive one was stale
};

// Fills ttft/e2e/itl/output tokens of `record` from a reader's timestamps, `sent` and `end`.
void fill_timings(RequestRecord& record, const StreamReader& reader, Clock::time_point sent, Clock::time_point end);

// TPOT of one request: (e2e − TTFT) / (output tokens − 1); nullopt with fewer than 2 tokens.
std::optional<double> tpot_ms(const RequestRecord& record);

// Percentile p in [0, 100] with linear interpolation between closest ranks (numpy's default).
// Empty input gives 0.
double percentile(std::vector<double> values, double p);

struct Distribution {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};
Distribution distribution(const std::vector<double>& values);

struct GoodputBounds {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
};
// "ttft:500,tpot:50" (either part may be left out); throws hearth::Error on anything else.
GoodputBounds parse_goodput(std::string_view spec);

struct ServeSummary {
  size_t requests = 0;
  size_t completed = 0;
  size_t failed = 0;
  size_t refused = 0;                        // HTTP 429 or 503 (part of `failed`)
  size_t reconnects = 0;                     // requests resent once after a stale keep-alive connection
  std::vector<std::string> first_errors;     // up to 5 distinct messages, with their status
  double duration_s = 0;
  double request_rate = 0;                   // completed / duration
  int64_t input_tokens = 0, output_tokens = 0;  // over completed requests
  bool input_tokens_reported = true;         // every completed request had usage.prompt_tokens
  bool output_tokens_reported = true;
  double mean_input_tokens = 0, mean_output_tokens = 0;
  double input_token_rate = 0, output_token_rate = 0;
  Distribution ttft, tpot, itl, e2e;
  GoodputBounds bounds;
  size_t good = 0;                           // completed requests within the bounds
  double goodput = 0;                        // good / duration
};

ServeSummary summarize(const std::vector<RequestRecord>& records, double duration_s, const GoodputBounds& bounds);

// ---- The run ------------------------------------------------------------------------------

struct ServeBenchParams {
  std::string url;            // http[s]://host[:port][/prefix]; "/v1" is added unless present
  std::string model;
  std::string api_key;        // sent as "Authorization: Bearer KEY" when not empty
  bool chat = true;           // /v1/chat/completions, else /v1/completions
  int32_t concurrency = 1;    // closed loop: this many clients
  double rate = 0;            // > 0: open loop, Poisson arrivals at this many requests/s
  int32_t requests = 100;
  int32_t input_len = 128;    // approximate prompt tokens (one common English word ≈ one token)
  int32_t output_len = 128;   // max_tokens
  double temperature = 0.0;
  bool ignore_eos = true;     // send the non-standard "ignore_eos": true
  uint64_t seed = 1;
  int32_t warmup = 1;         // requests sent (and discarded) before the measured run
  double timeout_s = 300;     // per request
  GoodputBounds goodput;
};

// A deterministic prompt of `n_words` common English words separated by spaces, seeded.
std::string synthetic_prompt(int32_t n_words, uint64_t seed);

// Inter-arrival gaps (seconds) of a Poisson process at `rate` per second: exponential, seeded.
std::vector<double> poisson_gaps(int32_t n, double rate, uint64_t seed);

// The request body for prompt `prompt` (JSON text).
std::string request_body(const ServeBenchParams& params, const std::string& prompt);

struct ServeBenchResult {
  ServeBenchParams params;
  std::string endpoint;      // the full URL requests went to
  ServeSummary summary;
};

// Sends the warm-up and then the measured requests; `progress` (may be null) gets a line now
// and then. Throws hearth::Error for a bad URL or an https URL without TLS support; request
// failures are counted, not thrown.
ServeBenchResult run_serve_bench(const ServeBenchParams& params, const std::function<void(const std::string&)>& progress);

std::string format_markdown(const ServeBenchResult& result);
std::string format_json(const ServeBenchResult& result);

}  // namespace hearth::bench
