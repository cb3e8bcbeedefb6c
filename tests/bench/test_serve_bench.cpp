// `hearth bench serve`: the SSE parser, the stream reader, the statistics, and whole runs against
// a fake OpenAI-compatible server.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/serve_bench.h"
#include "core/error.h"

namespace hearth::bench {
namespace {

using namespace std::chrono_literals;

std::vector<SseEvent> parse_all(const std::vector<std::string_view>& chunks, bool finish = true) {
  std::vector<SseEvent> events;
  SseParser parser([&](const SseEvent& e) { events.push_back(e); });
  for (auto c : chunks) parser.feed(c);
  if (finish) parser.finish();
  return events;
}

bool same(const std::vector<SseEvent>& a, const std::vector<SseEvent>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].event != b[i].event || a[i].data != b[i].data) return false;
  }
  return true;
}

// ---- SseParser ----------------------------------------------------------------------------

TEST(SseParser, EventsCommentsAndDone) {
  const auto events = parse_all({": ping\n\ndata: {\"a\":1}\n\n:comment\ndata: {\"b\":2}\n\ndata: [DONE]\n\n"});
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].data, "{\"a\":1}");
  EXPECT_EQ(events[1].data, "{\"b\":2}");
  EXPECT_EQ(events[2].data, "[DONE]");
  EXPECT_EQ(events[0].event, "");
}

TEST(SseParser, MultiLineDataEventFieldAndNoSpace) {
  const auto events = parse_all({"event: error\ndata: line one\ndata:line two\ndata\nid: 7\nretry: 10\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].event, "error");
  EXPECT_EQ(events[0].data, "line one\nline two\n");
}

TEST(SseParser, BlankLinesWithoutDataDispatchNothingAndEventNameResets) {
  const auto events = parse_all({"\n\n\r\nevent: x\n\ndata: a\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].event, "") << "an event name without data must not stick to the next event";
  EXPECT_EQ(events[0].data, "a");
}

TEST(SseParser, CrLfAndCrLineEndings) {
  const auto lf = parse_all({"data: one\n\ndata: two\ndata: three\n\n"});
  const auto crlf = parse_all({"data: one\r\n\r\ndata: two\r\ndata: three\r\n\r\n"});
  const auto cr = parse_all({"data: one\r\rdata: two\rdata: three\r\r"});
  ASSERT_EQ(lf.size(), 2u);
  EXPECT_EQ(lf[1].data, "two\nthree");
  EXPECT_TRUE(same(lf, crlf));
  EXPECT_TRUE(same(lf, cr));
}

TEST(SseParser, SplitAnywhereGivesTheSameEvents) {
  const std::string stream =
      ": keep-alive\r\ndata: {\"x\": \"a b\"}\r\n\r\nevent: message\ndata: 1\ndata: 2\n\ndata: [DONE]\r\n\r\n";
  const auto whole = parse_all({stream});
  ASSERT_EQ(whole.size(), 3u);
  EXPECT_EQ(whole[1].data, "1\n2");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    const std::string_view s(stream);
    EXPECT_TRUE(same(whole, parse_all({s.substr(0, cut), s.substr(cut)}))) << "cut at " << cut;
    for (size_t cut2 = cut; cut2 <= stream.size(); cut2 += 7) {
      EXPECT_TRUE(same(whole, parse_all({s.substr(0, cut), s.substr(cut, cut2 - cut), s.substr(cut2)})))
          << "cuts at " << cut << ", " << cut2;
    }
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < stream.size(); ++i) bytes.push_back(std::string_view(stream).substr(i, 1));
  EXPECT_TRUE(same(whole, parse_all(bytes)));
}

TEST(SseParser, CrAtTheEndOfAChunkThenLfIsOneLineEnd) {
  // "\r" | "\n\r\n": one line end, then a blank line — exactly one dispatch, not an extra empty line.
  const auto events = parse_all({"data: a\r", "\n\r\ndata: b\n\n"});
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, "a");
  EXPECT_EQ(events[1].data, "b");
}

TEST(SseParser, FinishDispatchesAnUnterminatedEvent) {
  EXPECT_EQ(parse_all({"data: last"}, /*finish=*/false).size(), 0u);
  const auto events = parse_all({"data: last"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "last");
  EXPECT_EQ(parse_all({"data: a\n\n: trailing comment"}).size(), 1u);
}

// ---- StreamReader -------------------------------------------------------------------------

SseEvent data(std::string d) { return SseEvent{"", std::move(d)}; }

TEST(StreamReader, ChatDeltasUsageAndDone) {
  StreamReader reader(/*chat=*/true);
  const Clock::time_point t0 = Clock::now();
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"role":"assistant"}}]})"), t0);
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"content":""}}]})"), t0 + 1ms);
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"content":"Hel"}}]})"), t0 + 2ms);
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]})"), t0 + 3ms);
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]})"), t0 + 4ms);
  reader.on_event(data(R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}})"), t0 + 5ms);
  EXPECT_FALSE(reader.done());
  reader.on_event(data("[DONE]"), t0 + 6ms);
  EXPECT_TRUE(reader.done());
  EXPECT_TRUE(reader.error().empty());
  ASSERT_EQ(reader.delta_times().size(), 3u) << "empty and role-only deltas are not content";
  EXPECT_EQ(reader.delta_times()[0], t0 + 2ms);
  EXPECT_EQ(reader.text_bytes(), 8u);
  EXPECT_EQ(reader.prompt_tokens(), 12);
  EXPECT_EQ(reader.completion_tokens(), 3);
}

TEST(StreamReader, CompletionsText) {
  StreamReader reader(/*chat=*/false);
  const Clock::time_point t0 = Clock::now();
  reader.on_event(data(R"({"choices":[{"index":0,"text":" one"}]})"), t0);
  reader.on_event(data(R"({"choices":[{"index":0,"delta":{"content":"ignored"}}]})"), t0);
  reader.on_event(data(R"({"choices":[{"index":0,"text":" two"}],"usage":null})"), t0);
  EXPECT_EQ(reader.delta_times().size(), 2u);
  EXPECT_FALSE(reader.completion_tokens().has_value());
}

TEST(StreamReader, ErrorPayloads) {
  {
    StreamReader reader(true);
    reader.on_event(data(R"({"choices":[{"delta":{"content":"a"}}]})"), Clock::now());
    reader.on_event(data(R"({"error":{"message":"context overflow","type":"invalid_request_error"}})"), Clock::now());
    reader.on_event(data(R"({"error":"second error is ignored"})"), Clock::now());
    EXPECT_EQ(reader.error(), "context overflow");
  }
  {
    StreamReader reader(true);
    reader.on_event(SseEvent{"error", R"({"message":"engine died"})"}, Clock::now());
    EXPECT_EQ(reader.error(), "engine died");
  }
  {
    StreamReader reader(true);
    reader.on_event(data(R"({"error":"plain string"})"), Clock::now());
    EXPECT_EQ(reader.error(), "plain string");
  }
  {
    StreamReader reader(true);
    reader.on_event(data("{not json"), Clock::now());
    EXPECT_NE(reader.error().find("malformed"), std::string::npos) << reader.error();
  }
}

// ---- Statistics ---------------------------------------------------------------------------

TEST(ServeStats, PercentilesInterpolateLikeNumpy) {
  const std::vector<double> v = {10, 1, 9, 2, 8, 3, 7, 4, 6, 5};
  EXPECT_DOUBLE_EQ(percentile(v, 50), 5.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 9.1);
  EXPECT_DOUBLE_EQ(percentile(v, 99), 9.91);
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(percentile({42}, 99), 42);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
  const Distribution d = distribution(v);
  EXPECT_EQ(d.count, 10u);
  EXPECT_DOUBLE_EQ(d.mean, 5.5);
  EXPECT_DOUBLE_EQ(d.p90, 9.1);
}

TEST(ServeStats, TimingsFromKnownTimestamps) {
  const Clock::time_point sent = Clock::now();
  StreamReader reader(true);
  for (auto at : {100ms, 150ms, 210ms, 240ms}) {
    reader.on_event(data(R"({"choices":[{"delta":{"content":"x"}}]})"), sent + at);
  }
  RequestRecord r;
  fill_timings(r, reader, sent, sent + 250ms);
  EXPECT_NEAR(r.ttft_ms, 100, 1e-9);
  EXPECT_NEAR(r.e2e_ms, 250, 1e-9);
  ASSERT_EQ(r.itl_ms.size(), 3u);
  EXPECT_NEAR(r.itl_ms[0], 50, 1e-9);
  EXPECT_NEAR(r.itl_ms[1], 60, 1e-9);
  EXPECT_NEAR(r.itl_ms[2], 30, 1e-9);
  EXPECT_EQ(r.output_tokens, 4) << "no usage: one token per content chunk";
  EXPECT_FALSE(r.output_tokens_reported);
  EXPECT_NEAR(*tpot_ms(r), 150.0 / 3, 1e-9);

  // The server's usage wins over the chunk count (a chunk may carry several tokens).
  reader.on_event(data(R"({"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":6}})"), sent + 245ms);
  fill_timings(r, reader, sent, sent + 250ms);
  EXPECT_EQ(r.output_tokens, 6);
  EXPECT_TRUE(r.output_tokens_reported);
  EXPECT_EQ(r.prompt_tokens, 7);
  EXPECT_NEAR(*tpot_ms(r), 150.0 / 5, 1e-9);

  RequestRecord one;
  one.output_tokens = 1;
  EXPECT_FALSE(tpot_ms(one).has_value());
}

RequestRecord completed(double ttft, double e2e, int64_t tokens) {
  RequestRecord r;
  r.ok = true;
  r.http_status = 200;
  r.ttft_ms = ttft;
  r.e2e_ms = e2e;
  r.output_tokens = tokens;
  r.output_tokens_reported = true;
  r.prompt_tokens = 10;
  r.prompt_tokens_reported = true;
  return r;
}

TEST(ServeStats, SummaryCountsAndGoodput) {
  std::vector<RequestRecord> records;
  records.push_back(completed(100, 1100, 11));  // tpot 100
  records.push_back(completed(300, 800, 11));   // tpot 50
  records.push_back(completed(600, 1100, 11));  // tpot 50, ttft too slow
  records.push_back(completed(200, 200, 1));    // no tpot: only ttft counts
  RequestRecord refused;
  refused.http_status = 429;
  refused.error = "busy";
  records.push_back(refused);
  records.push_back(refused);
  RequestRecord unavailable = refused;
  unavailable.http_status = 503;
  records.push_back(unavailable);
  RequestRecord broken;
  broken.error = "Connection";
  records.push_back(broken);

  const ServeSummary s = summarize(records, 2.0, parse_goodput("ttft:500,tpot:60"));
  EXPECT_EQ(s.requests, 8u);
  EXPECT_EQ(s.completed, 4u);
  EXPECT_EQ(s.failed, 4u);
  EXPECT_EQ(s.refused, 3u);
  ASSERT_EQ(s.first_errors.size(), 3u) << "distinct messages only";
  EXPECT_EQ(s.first_errors[0], "HTTP 429: busy");
  EXPECT_EQ(s.first_errors[1], "HTTP 503: busy");
  EXPECT_EQ(s.first_errors[2], "Connection");
  EXPECT_EQ(s.output_tokens, 34);
  EXPECT_EQ(s.input_tokens, 40);
  EXPECT_DOUBLE_EQ(s.request_rate, 2.0);
  EXPECT_DOUBLE_EQ(s.output_token_rate, 17.0);
  EXPECT_EQ(s.good, 2u);  // #2 and #4
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);
  EXPECT_EQ(s.tpot.count, 3u);
  EXPECT_NEAR(s.tpot.mean, 200.0 / 3, 1e-9);
  EXPECT_DOUBLE_EQ(s.ttft.p50, 250);

  EXPECT_EQ(summarize(records, 2.0, parse_goodput("tpot:60")).good, 3u);
  EXPECT_EQ(summarize(records, 2.0, {}).good, 4u);
}

TEST(ServeStats, GoodputSpec) {
  const GoodputBounds b = parse_goodput("ttft:250.5");
  EXPECT_EQ(b.ttft_ms, 250.5);
  EXPECT_FALSE(b.tpot_ms.has_value());
  EXPECT_EQ(parse_goodput("tpot:20,ttft:100").tpot_ms, 20);
  for (const char* bad : {"", "ttft", "ttft:", "ttft:abc", "ttft:10ms", "ttft:-1", "e2e:10", "ttft:10,,"}) {
    EXPECT_THROW(parse_goodput(bad), Error) << bad;
  }
}

// ---- Prompts, arrivals, request bodies ----------------------------------------------------

TEST(ServeLoad, SyntheticPromptsAreSeededWordLists) {
  const std::string a = synthetic_prompt(50, 7);
  EXPECT_EQ(a, synthetic_prompt(50, 7));
  EXPECT_NE(a, synthetic_prompt(50, 8));
  EXPECT_EQ(std::count(a.begin(), a.end(), ' '), 49);
  EXPECT_EQ(synthetic_prompt(1, 3).find(' '), std::string::npos);
}

TEST(ServeLoad, PoissonGapsHaveTheRightMean) {
  const auto gaps = poisson_gaps(20000, 4.0, 11);
  EXPECT_EQ(gaps, poisson_gaps(20000, 4.0, 11));
  double sum = 0, sq = 0;
  for (double g : gaps) {
    ASSERT_GE(g, 0);
    sum += g;
    sq += g * g;
  }
  const double mean = sum / static_cast<double>(gaps.size());
  EXPECT_NEAR(mean, 0.25, 0.25 * 0.05);
  // Exponential: standard deviation equals the mean.
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(gaps.size()) - mean * mean), 0.25, 0.25 * 0.05);
}

TEST(ServeLoad, RequestBody) {
  ServeBenchParams p;
  p.model = "m";
  p.output_len = 9;
  p.temperature = 0.5;
  auto body = nlohmann::json::parse(request_body(p, "hello"));
  EXPECT_EQ(body["model"], "m");
  EXPECT_EQ(body["messages"][0]["content"], "hello");
  EXPECT_EQ(body["max_tokens"], 9);
  EXPECT_EQ(body["temperature"], 0.5);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["ignore_eos"], true);
  p.chat = false;
  p.ignore_eos = false;
  body = nlohmann::json::parse(request_body(p, "hello"));
  EXPECT_EQ(body["prompt"], "hello");
  EXPECT_FALSE(body.contains("messages"));
  EXPECT_FALSE(body.contains("ignore_eos"));
}

// ---- Whole runs against a fake server -----------------------------------------------------

// A test fixture only, not a server: it answers the two completion routes by streaming
// `max_tokens` content chunks, the first after `first_delay`, then one every `gap`, then a usage
// chunk and [DONE]. Request k (in order of arrival) is refused with 429 + Retry-After when
// k % 5 == 4 and fails with 500 when k % 7 == 6, to check that failures are counted apart.
class FakeOpenAiServer {
 public:
  std::chrono::milliseconds first_delay{60};
  std::chrono::milliseconds gap{20};
  bool inject_failures = false;
  bool send_usage = true;
  int cut_after = -1;  // >= 0: drop the connection after this many content chunks
  std::string api_key;

  FakeOpenAiServer() {
    const auto handler = [this](const httplib::Request& req, httplib::Response& res) { handle(req, res); };
    server_.Post("/v1/chat/completions", handler);
    server_.Post("/v1/completions", handler);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(1ms);
  }
  ~FakeOpenAiServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int received() const { return received_; }
  nlohmann::json last_body() {
    std::lock_guard lock(mutex_);
    return last_body_;
  }

 private:
  void handle(const httplib::Request& req, httplib::Response& res) {
    const int k = received_++;
    if (!api_key.empty() && req.get_header_value("Authorization") != "Bearer " + api_key) {
      res.status = 401;
      res.set_content(R"({"error":{"message":"bad api key"}})", "application/json");
      return;
    }
    const nlohmann::json body = nlohmann::json::parse(req.body);
    {
      std::lock_guard lock(mutex_);
      last_body_ = body;
    }
    if (inject_failures && k % 5 == 4) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_content(R"({"error":{"message":"too many requests"}})", "application/json");
      return;
    }
    if (inject_failures && k % 7 == 6) {
      res.status = 500;
      res.set_content(R"({"error":{"message":"internal"}})", "application/json");
      return;
    }
    const bool chat = body.contains("messages");
    const std::string prompt = chat ? body["messages"][0]["content"].get<std::string>() : body["prompt"].get<std::string>();
    const int64_t prompt_tokens = std::count(prompt.begin(), prompt.end(), ' ') + 1;
    const int64_t n = body["max_tokens"].get<int64_t>();
    const bool usage = send_usage && body["stream_options"]["include_usage"].get<bool>();
    res.set_chunked_content_provider("text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
      const auto chunk = [&](const nlohmann::json& j) {
        // Each event in two writes, the second starting mid-line, with a comment between some.
        const std::string text = "data: " + j.dump() + "\r\n\r\n";
        const size_t half = text.size() / 2;
        sink.write(text.data(), half);
        sink.write(text.data() + half, text.size() - half);
      };
      if (chat) chunk({{"choices", {{{"index", 0}, {"delta", {{"role", "assistant"}}}}}}});
      std::this_thread::sleep_for(first_delay);
      for (int64_t i = 0; i < n; ++i) {
        if (i == cut_after) return false;  // httplib closes the connection mid-stream
        if (i > 0) std::this_thread::sleep_for(gap);
        if (i % 3 == 1) sink.write(": ping\n\n", 8);
        const std::string piece = " w" + std::to_string(i);
        chunk(chat ? nlohmann::json{{"choices", {{{"index", 0}, {"delta", {{"content", piece}}}}}}}
                   : nlohmann::json{{"choices", {{{"index", 0}, {"text", piece}}}}});
      }
      if (usage) {
        chunk({{"choices", nlohmann::json::array()},
               {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", n}, {"total_tokens", prompt_tokens + n}}}});
      }
      sink.write("data: [DONE]\n\n", 14);
      sink.done();
      return true;
    });
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> received_{0};
  std::mutex mutex_;
  nlohmann::json last_body_;
};

ServeBenchParams fake_params(const FakeOpenAiServer& server) {
  ServeBenchParams p;
  p.url = server.url();
  p.model = "fake";
  p.requests = 12;
  p.concurrency = 3;
  p.input_len = 20;
  p.output_len = 8;
  p.warmup = 0;
  p.timeout_s = 30;
  return p;
}

TEST(ServeBenchRun, ClosedLoopCountsTokensAndLatencies) {
  FakeOpenAiServer server;
  ServeBenchParams p = fake_params(server);
  p.warmup = 2;
  p.goodput = parse_goodput("ttft:10000,tpot:10000");
  const ServeBenchResult r = run_serve_bench(p, nullptr);
  const ServeSummary& s = r.summary;
  EXPECT_EQ(server.received(), 14) << "2 warm-up + 12 measured";
  EXPECT_EQ(r.endpoint, server.url() + "/v1/chat/completions");
  EXPECT_EQ(s.completed, 12u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_EQ(s.output_tokens, 12 * 8);
  EXPECT_EQ(s.input_tokens, 12 * 20) << "the fake reports one token per word";
  EXPECT_TRUE(s.input_tokens_reported);
  EXPECT_TRUE(s.output_tokens_reported);
  EXPECT_EQ(s.good, 12u);
  // Timing from the fake's sleeps; the upper bounds leave room for a loaded machine and sanitizers.
  EXPECT_GE(s.ttft.p50, 60);
  EXPECT_LT(s.ttft.p50, 60 + 1000);
  EXPECT_GE(s.tpot.mean, 20 * 0.75);  // a late first delta shortens e2e − TTFT
  EXPECT_LT(s.tpot.mean, 20 + 200);
  EXPECT_EQ(s.itl.count, 12u * 7);
  EXPECT_GE(s.itl.p50, 15);
  EXPECT_GE(s.e2e.mean, 60 + 7 * 20);
  // 12 requests of >= 200 ms on 3 clients: at least 4 rounds.
  EXPECT_GE(s.duration_s, 0.8);
  EXPECT_NEAR(s.request_rate, 12 / s.duration_s, 1e-9);

  const nlohmann::json body = server.last_body();
  EXPECT_EQ(body["model"], "fake");
  EXPECT_EQ(body["max_tokens"], 8);
  EXPECT_EQ(body["stream"], true);

  const std::string md = format_markdown(r);
  EXPECT_NE(md.find("| completed requests | 12 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| TTFT |"), std::string::npos) << md;
  const auto j = nlohmann::json::parse(format_json(r));
  EXPECT_EQ(j["completed"], 12);
  EXPECT_EQ(j["output_tokens"], 96);
  EXPECT_EQ(j["goodput"]["good_requests"], 12);
  EXPECT_GT(j["ttft_ms"]["p99"].get<double>(), 0);
}

TEST(ServeBenchRun, RefusedAndFailedRequestsAreCountedApart) {
  FakeOpenAiServer server;
  server.inject_failures = true;
  ServeBenchParams p = fake_params(server);
  p.requests = 20;
  p.concurrency = 4;
  p.output_len = 3;
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  // k = 4, 9, 14, 19 → 429; k = 6, 13 → 500.
  EXPECT_EQ(s.completed, 14u);
  EXPECT_EQ(s.failed, 6u);
  EXPECT_EQ(s.refused, 4u);
  EXPECT_EQ(s.output_tokens, 14 * 3);
  ASSERT_EQ(s.first_errors.size(), 2u);
  const bool order = s.first_errors[0].starts_with("HTTP 429");
  EXPECT_EQ(s.first_errors[order ? 0 : 1], "HTTP 429: too many requests (Retry-After: 1)");
  EXPECT_EQ(s.first_errors[order ? 1 : 0], "HTTP 500: internal");
}

TEST(ServeBenchRun, CompletionsEndpointWithoutUsageCountsChunks) {
  FakeOpenAiServer server;
  server.send_usage = false;
  server.first_delay = 5ms;
  server.gap = 2ms;
  ServeBenchParams p = fake_params(server);
  p.url = server.url() + "/v1/";
  p.chat = false;
  p.ignore_eos = false;
  p.output_len = 5;
  const ServeBenchResult r = run_serve_bench(p, nullptr);
  EXPECT_EQ(r.endpoint, server.url() + "/v1/completions");
  EXPECT_EQ(r.summary.completed, 12u);
  EXPECT_EQ(r.summary.output_tokens, 12 * 5);
  EXPECT_FALSE(r.summary.output_tokens_reported);
  EXPECT_FALSE(r.summary.input_tokens_reported);
  EXPECT_EQ(r.summary.input_tokens, 12 * 20) << "the requested length stands in";
  EXPECT_FALSE(server.last_body().contains("ignore_eos"));
  const std::string prompt = server.last_body()["prompt"].get<std::string>();
  EXPECT_EQ(std::count(prompt.begin(), prompt.end(), ' '), 19) << prompt;
}

TEST(ServeBenchRun, OpenLoopPoissonArrivals) {
  FakeOpenAiServer server;
  server.first_delay = 5ms;
  server.gap = 5ms;
  ServeBenchParams p = fake_params(server);
  p.rate = 40;
  p.requests = 40;
  p.output_len = 4;
  p.seed = 3;
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(s.completed, 40u);
  double arrivals = 0;
  for (double g : poisson_gaps(40, 40, 3)) arrivals += g;
  EXPECT_GE(s.duration_s, arrivals) << "the last request cannot leave before its arrival time";
  EXPECT_LT(s.duration_s, arrivals + 5.0);
}

TEST(ServeBenchRun, AStreamCutOffIsAFailure) {
  FakeOpenAiServer server;
  server.first_delay = 5ms;
  server.gap = 5ms;
  server.cut_after = 2;
  ServeBenchParams p = fake_params(server);
  p.requests = 2;
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(s.completed, 0u);
  EXPECT_EQ(s.failed, 2u);
  EXPECT_EQ(s.refused, 0u);
  ASSERT_EQ(s.first_errors.size(), 1u);
  EXPECT_NE(s.first_errors[0].find("stream cut off after 2 content chunk(s)"), std::string::npos) << s.first_errors[0];
}

TEST(ServeBenchRun, ApiKeyIsSent) {
  FakeOpenAiServer server;
  server.api_key = "sekret";
  ServeBenchParams p = fake_params(server);
  p.requests = 2;
  p.output_len = 2;
  const ServeSummary wrong = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(wrong.failed, 2u);
  ASSERT_EQ(wrong.first_errors.size(), 1u);
  EXPECT_EQ(wrong.first_errors[0], "HTTP 401: bad api key");
  p.api_key = "sekret";
  EXPECT_EQ(run_serve_bench(p, nullptr).summary.completed, 2u);
}

TEST(ServeBenchRun, TimeoutAndConnectionErrors) {
  FakeOpenAiServer server;
  server.first_delay = 1500ms;
  ServeBenchParams p = fake_params(server);
  p.requests = 2;
  p.concurrency = 2;
  p.timeout_s = 0.3;
  const auto t0 = Clock::now();
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  EXPECT_LT(Clock::now() - t0, 1400ms);
  EXPECT_EQ(s.failed, 2u);
  ASSERT_FALSE(s.first_errors.empty());
  EXPECT_NE(s.first_errors[0].find("timed out"), std::string::npos) << s.first_errors[0];

  // Nothing listens on the port of a server that has gone.
  std::string gone_url;
  {
    FakeOpenAiServer gone;
    gone_url = gone.url();
  }
  p.url = gone_url;
  p.timeout_s = 5;
  const ServeSummary refused = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(refused.failed, 2u);
  EXPECT_EQ(refused.refused, 0u) << "a connection error is not a 429/503";
  ASSERT_FALSE(refused.first_errors.empty());
  EXPECT_NE(refused.first_errors[0].find("Connection"), std::string::npos) << refused.first_errors[0];
}

TEST(ServeBenchRun, BadArguments) {
  ServeBenchParams p;
  p.model = "m";
  p.url = "127.0.0.1:8080";
  EXPECT_THROW(run_serve_bench(p, nullptr), Error);
  p.url = "ftp://x";
  EXPECT_THROW(run_serve_bench(p, nullptr), Error);
  p.url = "http://127.0.0.1:1";
  p.requests = 0;
  EXPECT_THROW(run_serve_bench(p, nullptr), Error);
  p.requests = 1;
  p.model = "";
  EXPECT_THROW(run_serve_bench(p, nullptr), Error);
}

// A raw HTTP/1.1 server for the keep-alive tests: each connection's first request is answered
// (a one-delta SSE stream, the connection kept alive); what arrives after it on the same
// connection is read and dropped by closing the connection without a byte of an answer, as a
// server does whose keep-alive timeout fires as the next request comes. With
// `drop_first_requests`, every request is dropped that way, on new connections too.
class ClosingKeepAliveServer {
 public:
  explicit ClosingKeepAliveServer(bool drop_first_requests = false) : drop_first_(drop_first_requests) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(listener_, 16);
    thread_ = std::thread([this] { serve(); });
  }
  ~ClosingKeepAliveServer() {
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int answered() const { return answered_; }
  int dropped() const { return dropped_; }

 private:
  // Reads one request (head and Content-Length body); false when the peer closed first.
  static bool read_request(int fd) {
    std::string data;
    char buf[4096];
    size_t head_end = std::string::npos;
    while (head_end == std::string::npos) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      data.append(buf, static_cast<size_t>(n));
      head_end = data.find("\r\n\r\n");
    }
    std::string lower = data.substr(0, head_end);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const size_t cl = lower.find("content-length:");
    const size_t length = cl == std::string::npos ? 0 : std::stoul(lower.substr(cl + 15));
    while (data.size() < head_end + 4 + length) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      data.append(buf, static_cast<size_t>(n));
    }
    return true;
  }

  void serve() {
    for (;;) {
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      for (int on_connection = 0; read_request(fd); ++on_connection) {
        if (drop_first_ || on_connection > 0) {
          ++dropped_;
          break;
        }
        ++answered_;
        const std::string body =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"}}]}\n\ndata: [DONE]\n\n";
        const std::string response = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n"
                                     "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
        if (::send(fd, response.data(), response.size(), MSG_NOSIGNAL) < 0) break;
      }
      ::close(fd);
    }
  }

  bool drop_first_;
  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> answered_{0};
  std::atomic<int> dropped_{0};
};

TEST(ServeBenchRun, AStaleKeepAliveConnectionIsReplacedAndTheRequestSentAgain) {
  ClosingKeepAliveServer server;
  ServeBenchParams p;
  p.url = server.url();
  p.model = "fake";
  p.requests = 4;
  p.concurrency = 1;
  p.warmup = 0;
  p.output_len = 1;
  p.timeout_s = 10;
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(s.completed, 4u) << (s.first_errors.empty() ? "" : s.first_errors[0]);
  EXPECT_EQ(s.failed, 0u);
  // Requests 2..4 each found their connection dead and went again on a new one.
  EXPECT_EQ(server.answered(), 4);
  EXPECT_EQ(server.dropped(), 3);
  EXPECT_EQ(s.reconnects, 3u);
}

TEST(ServeBenchRun, ARequestThatFailsOnANewConnectionIsNotSentAgain) {
  ClosingKeepAliveServer server(/*drop_first_requests=*/true);
  ServeBenchParams p;
  p.url = server.url();
  p.model = "fake";
  p.requests = 3;
  p.concurrency = 1;
  p.warmup = 0;
  p.output_len = 1;
  p.timeout_s = 10;
  const ServeSummary s = run_serve_bench(p, nullptr).summary;
  EXPECT_EQ(s.failed, 3u);
  EXPECT_EQ(s.reconnects, 0u);
  EXPECT_EQ(server.dropped(), 3) << "each request reached the server once";
  EXPECT_EQ(server.answered(), 0);
}

}  // namespace
}  // namespace hearth::bench
