// `hearth bench serve`: drive an OpenAI-compatible endpoint and report TTFT / TPOT / ITL / e2e
// percentiles, throughput and goodput.
#include <cstdio>

#include "apps/commands.h"
#include "bench/serve_bench.h"
#include "core/error.h"

namespace hearth::apps {

int run_bench_serve(const BenchServeArgs& args) {
  if (args.output != "md" && args.output != "json") {
    throw Error(fmt::format("unknown output format '{}' (md, json)", args.output));
  }
  if (args.endpoint != "chat" && args.endpoint != "completions") {
    throw Error(fmt::format("--endpoint '{}': chat or completions", args.endpoint));
  }
  bench::ServeBenchParams p;
  p.url = args.url;
  p.model = args.model;
  p.api_key = args.api_key;
  p.chat = args.endpoint == "chat";
  p.concurrency = args.concurrency;
  p.rate = args.rate;
  p.requests = args.requests;
  p.input_len = args.input_len;
  p.output_len = args.output_len;
  p.temperature = args.temperature;
  p.ignore_eos = args.ignore_eos;
  p.seed = args.seed;
  p.warmup = args.warmup;
  p.timeout_s = args.timeout_s;
  if (!args.goodput.empty()) p.goodput = bench::parse_goodput(args.goodput);

  const bench::ServeBenchResult result = bench::run_serve_bench(
      p, [](const std::string& line) { std::fprintf(stderr, "hearth bench serve: %s\n", line.c_str()); });
  const std::string text = args.output == "json" ? bench::format_json(result) : bench::format_markdown(result);
  std::printf("%s%s", text.c_str(), text.ends_with('\n') ? "" : "\n");
  // Every request failing is an error of the run (a wrong URL or model), not a measurement.
  return result.summary.completed == 0 ? 1 : 0;
}

}  // namespace hearth::apps
