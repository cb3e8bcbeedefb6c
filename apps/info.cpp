#include <cstdio>

#include "apps/commands.h"
#include "engine/gguf.h"
#include "engine/model_info.h"

namespace hearth::apps {

int run_info(const InfoArgs& args) {
  const gguf::GgufFile file = gguf::GgufFile::open(args.model);
  const auto info = engine::model_info_json(file, {.tensors = args.tensors, .metadata = args.metadata});
  const std::string text = args.json ? info.dump(2) + "\n" : engine::model_info_text(info);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace hearth::apps
