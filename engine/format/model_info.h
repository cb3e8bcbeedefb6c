// What `hearth info` says about a GGUF model: the facts a user checks before running it
// (architecture, size, shape, tokenizer, rope) and the tensor inventory, as JSON (the
// canonical form, `--json`) or as aligned text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "engine/format/gguf.h"

namespace hearth::engine {

struct InfoOptions {
  bool tensors = false;   // list every tensor (name, type, shape, offsets, bytes)
  bool metadata = false;  // list every metadata key with its type and (short) value
};

// The llama.cpp file-type name of `general.file_type` ("MOSTLY_Q4_K_M"), or "unknown(N)".
std::string file_type_name(uint32_t file_type);

nlohmann::ordered_json model_info_json(const gguf::GgufFile& file, const InfoOptions& options = {});
std::string model_info_text(const nlohmann::ordered_json& info);

}  // namespace hearth::engine
