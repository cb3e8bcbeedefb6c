#include "engine/format/model_info.h"

#include <fmt/format.h>

#include <map>

namespace hearth::engine {
namespace {

using json = nlohmann::ordered_json;

// Value of a metadata entry as JSON: scalars as numbers/strings/bools, arrays of scalars as
// lists (long arrays abbreviated to their count unless `full`).
json value_json(const gguf::Value& value, bool full_arrays) {
  return std::visit(
      [&](const auto& v) -> json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          return std::string(v);
        } else if constexpr (std::is_same_v<T, gguf::ArrayValue>) {
          if (!full_arrays) return json{{"type", gguf::value_type_name(v.elem_type)}, {"count", v.count}};
          json list = json::array();
          for (uint64_t i = 0; i < v.count; ++i) {
            switch (v.elem_type) {
              case gguf::ValueType::UINT8: list.push_back(v.template at<uint8_t>(i)); break;
              case gguf::ValueType::INT8: list.push_back(v.template at<int8_t>(i)); break;
              case gguf::ValueType::UINT16: list.push_back(v.template at<uint16_t>(i)); break;
              case gguf::ValueType::INT16: list.push_back(v.template at<int16_t>(i)); break;
              case gguf::ValueType::UINT32: list.push_back(v.template at<uint32_t>(i)); break;
              case gguf::ValueType::INT32: list.push_back(v.template at<int32_t>(i)); break;
              case gguf::ValueType::UINT64: list.push_back(v.template at<uint64_t>(i)); break;
              case gguf::ValueType::INT64: list.push_back(v.template at<int64_t>(i)); break;
              case gguf::ValueType::FLOAT32: list.push_back(v.template at<float>(i)); break;
              case gguf::ValueType::FLOAT64: list.push_back(v.template at<double>(i)); break;
              case gguf::ValueType::BOOL: list.push_back(v.template at<bool>(i)); break;
              case gguf::ValueType::STRING: list.push_back(std::string(v.strings[i])); break;
              case gguf::ValueType::ARRAY:
                list.push_back(json{{"type", gguf::value_type_name(v.arrays[i].elem_type)}, {"count", v.arrays[i].count}});
                break;
            }
          }
          return list;
        } else {
          return v;
        }
      },
      value.storage());
}

// A per-architecture hyperparameter, e.g. "llama.context_length". Small arrays (per-layer
// values such as OpenELM's head counts) are kept as lists.
void add_hparam(json& out, const gguf::GgufFile& file, const std::string& arch, const char* field,
                const char* key_suffix) {
  const gguf::Value* v = file.find(arch + "." + key_suffix);
  if (v == nullptr) return;
  const auto* array = v->get_if<gguf::ArrayValue>();
  if (array != nullptr && array->count > 1024) return;
  out[field] = value_json(*v, /*full_arrays=*/true);
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string human_count(uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} B", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f} M", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.2f} K", static_cast<double>(n) / 1e3);
  return fmt::format("{}", n);
}

std::string scalar_text(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_number_float()) return fmt::format("{:g}", j.get<double>());
  return j.dump();
}

}  // namespace

std::string file_type_name(uint32_t file_type) {
  static const std::map<uint32_t, const char*> kNames = {
      {0, "ALL_F32"},         {1, "MOSTLY_F16"},      {2, "MOSTLY_Q4_0"},     {3, "MOSTLY_Q4_1"},
      {7, "MOSTLY_Q8_0"},     {8, "MOSTLY_Q5_0"},     {9, "MOSTLY_Q5_1"},     {10, "MOSTLY_Q2_K"},
      {11, "MOSTLY_Q3_K_S"},  {12, "MOSTLY_Q3_K_M"},  {13, "MOSTLY_Q3_K_L"},  {14, "MOSTLY_Q4_K_S"},
      {15, "MOSTLY_Q4_K_M"},  {16, "MOSTLY_Q5_K_S"},  {17, "MOSTLY_Q5_K_M"},  {18, "MOSTLY_Q6_K"},
      {19, "MOSTLY_IQ2_XXS"}, {20, "MOSTLY_IQ2_XS"},  {21, "MOSTLY_Q2_K_S"},  {22, "MOSTLY_IQ3_XS"},
      {23, "MOSTLY_IQ3_XXS"}, {24, "MOSTLY_IQ1_S"},   {25, "MOSTLY_IQ4_NL"},  {26, "MOSTLY_IQ3_S"},
      {27, "MOSTLY_IQ3_M"},   {28, "MOSTLY_IQ2_S"},   {29, "MOSTLY_IQ2_M"},   {30, "MOSTLY_IQ4_XS"},
      {31, "MOSTLY_IQ1_M"},   {32, "MOSTLY_BF16"},    {36, "MOSTLY_TQ1_0"},   {37, "MOSTLY_TQ2_0"},
      {38, "MOSTLY_MXFP4_MOE"}, {39, "MOSTLY_NVFP4"}, {40, "MOSTLY_Q1_0"},    {1024, "GUESSED"},
  };
  auto it = kNames.find(file_type);
  return it != kNames.end() ? it->second : fmt::format("unknown({})", file_type);
}

json model_info_json(const gguf::GgufFile& file, const InfoOptions& options) {
  json info;
  info["file"] = file.path();
  info["file_size"] = file.file_size();
  info["gguf_version"] = file.version();
  info["alignment"] = file.alignment();
  info["data_offset"] = file.data_offset();
  info["tensor_count"] = file.tensors().size();
  info["metadata_count"] = file.metadata().size();

  const std::string arch = file.get_or<std::string>("general.architecture", "");
  info["architecture"] = arch.empty() ? json(nullptr) : json(arch);
  info["name"] = file.contains("general.name") ? json(file.get<std::string>("general.name")) : json(nullptr);
  if (file.contains("general.file_type")) {
    info["file_type"] = file_type_name(static_cast<uint32_t>(file.get_uint("general.file_type")));
  } else {
    info["file_type"] = nullptr;
  }

  uint64_t parameters = 0;
  uint64_t tensor_bytes = 0;
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> by_type;  // type -> (count, bytes)
  for (const gguf::TensorInfo& t : file.tensors()) {
    parameters += static_cast<uint64_t>(t.n_elements);
    tensor_bytes += t.n_bytes;
    auto& [count, bytes] = by_type[static_cast<uint32_t>(t.type)];
    ++count;
    bytes += t.n_bytes;
  }
  info["parameters"] = parameters;
  info["tensor_bytes"] = tensor_bytes;

  json hparams = json::object();
  if (!arch.empty()) {
    add_hparam(hparams, file, arch, "context_length", "context_length");
    add_hparam(hparams, file, arch, "embedding_length", "embedding_length");
    add_hparam(hparams, file, arch, "block_count", "block_count");
    add_hparam(hparams, file, arch, "feed_forward_length", "feed_forward_length");
    add_hparam(hparams, file, arch, "head_count", "attention.head_count");
    add_hparam(hparams, file, arch, "head_count_kv", "attention.head_count_kv");
    add_hparam(hparams, file, arch, "key_length", "attention.key_length");
    add_hparam(hparams, file, arch, "value_length", "attention.value_length");
    add_hparam(hparams, file, arch, "rms_norm_epsilon", "attention.layer_norm_rms_epsilon");
    add_hparam(hparams, file, arch, "norm_epsilon", "attention.layer_norm_epsilon");
    add_hparam(hparams, file, arch, "sliding_window", "attention.sliding_window");
    add_hparam(hparams, file, arch, "expert_count", "expert_count");
    add_hparam(hparams, file, arch, "expert_used_count", "expert_used_count");
  }
  info["hparams"] = hparams;

  json rope = json::object();
  if (!arch.empty()) {
    add_hparam(rope, file, arch, "dimension_count", "rope.dimension_count");
    add_hparam(rope, file, arch, "freq_base", "rope.freq_base");
    add_hparam(rope, file, arch, "scaling_type", "rope.scaling.type");
    add_hparam(rope, file, arch, "scaling_factor", "rope.scaling.factor");
    add_hparam(rope, file, arch, "scaling_original_context_length", "rope.scaling.original_context_length");
  }
  info["rope"] = rope;

  json tok = json::object();
  tok["model"] = file.contains("tokenizer.ggml.model") ? json(file.get<std::string>("tokenizer.ggml.model")) : json(nullptr);
  tok["pre"] = file.contains("tokenizer.ggml.pre") ? json(file.get<std::string>("tokenizer.ggml.pre")) : json(nullptr);
  if (const gguf::Value* tokens = file.find("tokenizer.ggml.tokens")) {
    if (const auto* a = tokens->get_if<gguf::ArrayValue>()) tok["vocab_size"] = a->count;
  } else if (!arch.empty() && file.contains(arch + ".vocab_size")) {
    tok["vocab_size"] = file.get_uint(arch + ".vocab_size");
  }
  if (const gguf::Value* merges = file.find("tokenizer.ggml.merges")) {
    if (const auto* a = merges->get_if<gguf::ArrayValue>()) tok["merges"] = a->count;
  }
  for (const char* id : {"bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"}) {
    const std::string key = std::string("tokenizer.ggml.") + id;
    if (file.contains(key)) tok[id] = file.get_uint(key);
  }
  for (const char* flag : {"add_bos_token", "add_eos_token"}) {
    const std::string key = std::string("tokenizer.ggml.") + flag;
    if (const gguf::Value* v = file.find(key); v != nullptr && v->get_if<bool>() != nullptr) tok[flag] = *v->get_if<bool>();
  }
  tok["chat_template"] = file.contains("tokenizer.chat_template");
  info["tokenizer"] = tok;

  json types = json::array();
  for (const auto& [raw, count_bytes] : by_type) {
    types.push_back({{"type", std::string(dtype_name(static_cast<DType>(raw)))},
                     {"count", count_bytes.first},
                     {"bytes", count_bytes.second}});
  }
  info["tensor_types"] = types;

  if (options.metadata) {
    json meta = json::array();
    for (const gguf::KeyValue& kv : file.metadata()) {
      const auto* a = kv.value.get_if<gguf::ArrayValue>();
      json entry = {{"key", std::string(kv.key)}, {"type", gguf::value_type_name(kv.value.type())}};
      if (a != nullptr) entry["elem_type"] = gguf::value_type_name(a->elem_type);
      entry["value"] = value_json(kv.value, /*full_arrays=*/a == nullptr || a->count <= 16);
      meta.push_back(std::move(entry));
    }
    info["metadata"] = meta;
  }
  if (options.tensors) {
    json list = json::array();
    for (const gguf::TensorInfo& t : file.tensors()) {
      json shape = json::array();
      for (int d = 0; d < t.n_dims; ++d) shape.push_back(t.ne[d]);
      list.push_back({{"name", std::string(t.name)},
                      {"type", std::string(dtype_name(t.type))},
                      {"shape", shape},
                      {"offset", t.offset},
                      {"file_offset", file.data_offset() + t.offset},
                      {"bytes", t.n_bytes}});
    }
    info["tensors"] = list;
  }
  return info;
}

std::string model_info_text(const json& info) {
  std::string out;
  auto line = [&out](std::string_view label, const std::string& value) {
    out += fmt::format("{:<22} {}\n", label, value);
  };
  auto opt = [](const json& j) { return j.is_null() ? std::string("-") : scalar_text(j); };
  auto list_or_scalar = [&](const json& j) {
    if (!j.is_array()) return scalar_text(j);
    // Per-layer values: show the range.
    double lo = 0, hi = 0;
    for (size_t i = 0; i < j.size(); ++i) {
      const double v = j[i].get<double>();
      lo = i ? std::min(lo, v) : v;
      hi = i ? std::max(hi, v) : v;
    }
    return fmt::format("{:g}..{:g} (per layer)", lo, hi);
  };

  line("file", fmt::format("{} ({})", info["file"].get<std::string>(), human_bytes(info["file_size"].get<uint64_t>())));
  line("format", fmt::format("GGUF v{}, {} tensors, {} metadata keys, alignment {}, data at {}",
                             info["gguf_version"].get<uint32_t>(), info["tensor_count"].get<uint64_t>(),
                             info["metadata_count"].get<uint64_t>(), info["alignment"].get<uint64_t>(),
                             info["data_offset"].get<uint64_t>()));
  line("architecture", opt(info["architecture"]));
  line("name", opt(info["name"]));
  line("file type", opt(info["file_type"]));
  const uint64_t params = info["parameters"].get<uint64_t>();
  line("parameters", fmt::format("{} ({})", human_count(params), params));
  const uint64_t tensor_bytes = info["tensor_bytes"].get<uint64_t>();
  line("weights", fmt::format("{} ({:.2f} bits per weight)", human_bytes(tensor_bytes),
                              params ? 8.0 * static_cast<double>(tensor_bytes) / static_cast<double>(params) : 0.0));

  const json& hp = info["hparams"];
  const std::pair<const char*, const char*> hp_rows[] = {
      {"context length", "context_length"},   {"embedding size", "embedding_length"},
      {"layers", "block_count"},               {"feed-forward size", "feed_forward_length"},
      {"heads", "head_count"},                 {"KV heads", "head_count_kv"},
      {"key / value length", "key_length"},    {"RMS norm epsilon", "rms_norm_epsilon"},
      {"norm epsilon", "norm_epsilon"},        {"sliding window", "sliding_window"},
      {"experts", "expert_count"},             {"experts used", "expert_used_count"},
  };
  for (const auto& [label, key] : hp_rows) {
    if (!hp.contains(key)) continue;
    std::string value = list_or_scalar(hp[key]);
    if (std::string_view(key) == "key_length" && hp.contains("value_length")) {
      value += " / " + list_or_scalar(hp["value_length"]);
    }
    line(label, value);
  }

  const json& tok = info["tokenizer"];
  std::string tok_text = opt(tok["model"]);
  if (!tok["pre"].is_null()) tok_text += fmt::format(" (pre-tokenizer {})", tok["pre"].get<std::string>());
  line("tokenizer", tok_text);
  line("vocabulary size", tok.contains("vocab_size") ? scalar_text(tok["vocab_size"]) : "-");
  std::string special;
  for (const char* id : {"bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"}) {
    if (tok.contains(id)) special += fmt::format("{}{}={}", special.empty() ? "" : ", ", std::string_view(id).substr(0, std::string_view(id).find('_')), tok[id].get<uint64_t>());
  }
  if (!special.empty()) line("special tokens", special);
  line("chat template", tok["chat_template"].get<bool>() ? "yes" : "no");

  const json& rope = info["rope"];
  if (rope.empty()) {
    line("rope", "-");
  } else {
    std::string r;
    for (const auto& [key, value] : rope.items()) r += fmt::format("{}{}={}", r.empty() ? "" : ", ", key, list_or_scalar(value));
    line("rope", r);
  }

  out += "\ntensor types:\n";
  out += fmt::format("  {:<8} {:>7} {:>14} {:>7}\n", "type", "tensors", "bytes", "share");
  for (const json& t : info["tensor_types"]) {
    const uint64_t bytes = t["bytes"].get<uint64_t>();
    out += fmt::format("  {:<8} {:>7} {:>14} {:>6.1f}%\n", t["type"].get<std::string>(), t["count"].get<uint64_t>(),
                       bytes, tensor_bytes ? 100.0 * static_cast<double>(bytes) / static_cast<double>(tensor_bytes) : 0.0);
  }

  if (info.contains("metadata")) {
    out += "\nmetadata:\n";
    for (const json& kv : info["metadata"]) {
      std::string type = kv["type"].get<std::string>();
      if (kv.contains("elem_type")) type += fmt::format("[{}]", kv["elem_type"].get<std::string>());
      std::string value = kv["value"].is_string() ? kv["value"].get<std::string>() : kv["value"].dump();
      if (value.size() > 100) value = value.substr(0, 97) + "...";
      for (char& ch : value) {
        if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
      }
      out += fmt::format("  {:<48} {:<16} {}\n", kv["key"].get<std::string>(), type, value);
    }
  }
  if (info.contains("tensors")) {
    out += "\ntensors:\n";
    out += fmt::format("  {:<48} {:<7} {:<28} {:>14} {:>12}\n", "name", "type", "shape", "file offset", "bytes");
    for (const json& t : info["tensors"]) {
      std::string shape;
      for (const json& d : t["shape"]) shape += fmt::format("{}{}", shape.empty() ? "" : " x ", d.get<int64_t>());
      out += fmt::format("  {:<48} {:<7} {:<28} {:>14} {:>12}\n", t["name"].get<std::string>(),
                         t["type"].get<std::string>(), shape.empty() ? "scalar" : shape,
                         t["file_offset"].get<uint64_t>(), t["bytes"].get<uint64_t>());
    }
  }
  return out;
}

}  // namespace hearth::engine
