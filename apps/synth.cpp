// `hearth synth`: argument checks and reporting; engine/model/synth.h builds the model.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "apps/commands.h"
#include "core/error.h"
#include "engine/model/synth.h"

namespace hearth::apps {

int run_synth(const SynthArgs& args) {
  if (args.list_shapes) {
    const std::string text = engine::synth_shapes_text();
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  engine::SynthShape shape;
  if (!args.shape.empty()) {
    if (args.custom_dims) {
      throw Error("--shape cannot be combined with --arch, --embd, --layers, --heads, --kv-heads, --ff or --vocab");
    }
    shape = engine::synth_shape(args.shape);
  } else {
    if (args.embd == 0 || args.layers == 0 || args.heads == 0 || args.ff == 0) {
      throw Error("give --shape NAME (see --list-shapes), or --embd, --layers, --heads and --ff");
    }
    shape.arch = args.arch;
    shape.n_embd = args.embd;
    shape.n_layer = args.layers;
    shape.n_head = args.heads;
    shape.n_head_kv = args.kv_heads != 0 ? args.kv_heads : args.heads;
    shape.n_ff = args.ff;
    shape.n_vocab = args.vocab;
    if (shape.arch == "qwen2") {
      shape.rope_freq_base = 1e6f;
      shape.norm_eps = 1e-6f;
    }
    shape.name = fmt::format("{}-{}x{}-h{}-kv{}-ff{}", shape.arch, shape.n_embd, shape.n_layer, shape.n_head,
                             shape.n_head_kv, shape.n_ff);
  }
  if (args.type.empty()) throw Error(fmt::format("--type is required ({})", engine::synth_type_names()));
  if (args.output.empty()) throw Error("-o OUT.gguf is required");

  engine::SynthOptions options;
  options.shape = shape;
  options.type = engine::synth_type(args.type, args.pure);
  options.tokenizer_from = args.tokenizer_from;
  options.seed = args.seed;
  options.force = args.force;
  options.n_threads = args.threads;
  // Progress on a terminal only: one line, rewritten at most every 5 %.
  int last_percent = -1;
  if (::isatty(STDERR_FILENO) != 0) {
    options.progress = [&last_percent](uint64_t done, uint64_t total) {
      const int percent = total == 0 ? 100 : static_cast<int>(done * 100 / total);
      if (percent / 5 == last_percent / 5) return;
      last_percent = percent;
      std::fprintf(stderr, "\rsynth: %3d%% of %.2f GB", percent, static_cast<double>(total) / 1e9);
      std::fflush(stderr);
    };
  }

  const auto start = std::chrono::steady_clock::now();
  const engine::SynthResult r = engine::synthesize_model(options, args.output);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (last_percent >= 0) std::fprintf(stderr, "\n");
  const double params = static_cast<double>(r.n_params), bytes = static_cast<double>(r.file_bytes);
  const std::string params_text = params >= 1e9 ? fmt::format("{:.3f}B", params / 1e9)
                                  : params >= 1e6 ? fmt::format("{:.1f}M", params / 1e6)
                                                  : fmt::format("{}", r.n_params);
  const std::string size_text =
      bytes >= 1e9 ? fmt::format("{:.3f} GB", bytes / 1e9) : fmt::format("{:.2f} MB", bytes / 1e6);
  const std::string line =
      fmt::format("wrote {}: {}, {} parameters, vocabulary {}, {} tensors ({}), {} in {:.2f} s ({:.0f} MB/s)\n",
                  args.output, r.name, params_text, r.shape.n_vocab, r.n_tensors, r.tensor_types, size_text, seconds,
                  bytes / 1e6 / seconds);
  std::fwrite(line.data(), 1, line.size(), stdout);
  return 0;
}

}  // namespace hearth::apps
