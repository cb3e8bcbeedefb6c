#include "server/api_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <span>
#include <string_view>

#include "engine/grammar/grammar.h"
#include "engine/grammar/json_schema.h"
#include "server/tool_calls.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

json error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}

namespace {

constexpr size_t kMaxStops = 16;
constexpr size_t kMaxStopBytes = 256;
constexpr int32_t kMaxN = 16;
constexpr int32_t kMaxTopLogprobs = 20;

// Every top-level field each endpoint knows: honoured (parsed below) or accepted without effect
// on the output (docs/API.md says why, per field). Anything else is refused with a 400 naming it.
constexpr std::string_view kChatFields[] = {
    // honoured
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "seed", "stop", "n", "logprobs", "top_logprobs", "logit_bias",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "best_of",
    // extensions (llama.cpp's names), honoured
    "top_k", "min_p", "repeat_penalty", "ignore_eos", "grammar", "json_schema",
    // accepted without effect
    "user", "store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "prediction", "modalities"};
constexpr std::string_view kCompletionFields[] = {
    "model", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "seed", "stop", "n", "logprobs", "logit_bias", "best_of", "echo",
    "suffix", "top_k", "min_p", "repeat_penalty", "ignore_eos", "user", "grammar", "json_schema", "response_format"};

// Fields refused with a reason of their own (before the generic "unrecognized" refusal).
struct Refused {
  std::string_view name;
  std::string_view reason;
};
constexpr Refused kRefusedFields[] = {
    {"audio", "'audio' (audio output) is not supported by this server: text only"},
    {"reasoning_effort", "'reasoning_effort' is not supported: this server's models have no reasoning setting"},
    {"verbosity", "'verbosity' is not supported by this server"},
    {"web_search_options", "'web_search_options' (web search) is not supported by this server"},
    {"moderation", "'moderation' is not supported by this server"},
};

[[noreturn]] void invalid(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// The field if present and not null.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& body, const char* name, double lo, double hi, double fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) invalid(name, fmt::format("'{}' must be a number, not {}", name, type_name(*v)));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    invalid(name, fmt::format("'{}' must be between {} and {}; got {}", name, lo, hi, x));
  }
  return x;
}

int64_t integer(const json& body, const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number_integer() && !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>())) {
    invalid(name, fmt::format("'{}' must be an integer, not {}", name, type_name(*v)));
  }
  const double x = v->get<double>();
  if (x < static_cast<double>(lo) || x > static_cast<double>(hi)) {
    invalid(name, fmt::format("'{}' must be between {} and {}; got {}", name, lo, hi, v->dump()));
  }
  return v->is_number_unsigned() ? static_cast<int64_t>(v->get<uint64_t>()) : v->get<int64_t>();
}

// A string field if present and not null; 400 for another type.
const json* string_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (v != nullptr && !v->is_string()) invalid(name, fmt::format("'{}' must be a string, not {}", name, type_name(*v)));
  return v;
}

const json* object_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (v != nullptr && !v->is_object()) invalid(name, fmt::format("'{}' must be an object, not {}", name, type_name(*v)));
  return v;
}

bool boolean(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) invalid(name, fmt::format("'{}' must be a boolean, not {}", name, type_name(*v)));
  return v->get<bool>();
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& content, size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  if (content.is_null()) return {};
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) invalid(param, fmt::format("'{}' must be a string or an array of parts", param));
  std::string text;
  for (size_t p = 0; p < content.size(); ++p) {
    const json& part = content[p];
    const std::string part_param = fmt::format("{}[{}]", param, p);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      invalid(part_param, fmt::format("'{}' must be an object with a 'type'", part_param));
    }
    const std::string type = part["type"].get<std::string>();
    if (type != "text") invalid(part_param, fmt::format("content parts of type '{}' are not supported (text only)", type));
    if (!part.contains("text") || !part["text"].is_string()) {
      invalid(part_param + ".text", fmt::format("'{}.text' must be a string", part_param));
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

// The messages, with the turns of tool calling written in the format of tool_calls.h: an
// assistant's `tool_calls` (or legacy `function_call`) as the format writes calls, a `tool` (or
// legacy `function`) result as the format returns results (consecutive Hermes results share one
// user turn, as Qwen's template writes them).
std::vector<engine::ChatMessage> parse_messages(const json& body, ToolFormat format) {
  const json* m = field(body, "messages");
  if (m == nullptr) invalid("messages", "'messages' is required");
  if (!m->is_array()) invalid("messages", fmt::format("'messages' must be an array, not {}", type_name(*m)));
  if (m->empty()) invalid("messages", "'messages' must contain at least one message");
  std::vector<engine::ChatMessage> messages;
  std::map<std::string, std::string> call_names;  // tool_call_id -> function name
  bool merged_results = false;                     // the last turn holds Hermes tool results
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!msg.is_object()) invalid(param, fmt::format("'{}' must be an object, not {}", param, type_name(msg)));
    if (!msg.contains("role") || !msg["role"].is_string()) invalid(param + ".role", fmt::format("'{}.role' must be a string", param));
    std::string role = msg["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "function") {
      invalid(param + ".role", fmt::format("role '{}' is not supported (system, developer, user, assistant, tool)", role));
    }
    const json* calls = field(msg, "tool_calls");
    const json* function_call = field(msg, "function_call");
    const bool has_calls = role == "assistant" && (calls != nullptr || function_call != nullptr);
    if (!msg.contains("content") && !has_calls) invalid(param + ".content", fmt::format("'{}.content' is required", param));
    std::string content = msg.contains("content") ? message_content(msg["content"], i) : std::string();
    bool merge = false;
    if (role == "assistant" && calls != nullptr) {
      if (calls->is_array()) {
        for (const json& c : *calls) {
          if (c.is_object() && c.contains("id") && c["id"].is_string() && c.contains("function") &&
              c["function"].is_object() && c["function"].contains("name") && c["function"]["name"].is_string()) {
            call_names[c["id"].get<std::string>()] = c["function"]["name"].get<std::string>();
          }
        }
      }
      const std::string text = tool_calls_as_text(*calls, param + ".tool_calls", format);
      content = content.empty() ? text : content + "\n" + text;
    } else if (role == "assistant" && function_call != nullptr) {
      const std::string text =
          tool_calls_as_text(json::array({{{"function", *function_call}}}), param + ".function_call", format);
      content = content.empty() ? text : content + "\n" + text;
    } else if (role == "tool") {
      const json* id = field(msg, "tool_call_id");
      if (id == nullptr || !id->is_string()) invalid(param + ".tool_call_id", fmt::format("'{}.tool_call_id' must be a string", param));
      const auto name = call_names.find(id->get<std::string>());
      ToolResultTurn turn = tool_result_turn(id->get<std::string>(), name != call_names.end() ? name->second : "", content, format);
      role = std::move(turn.role);
      content = std::move(turn.content);
      merge = format == ToolFormat::Hermes;
    } else if (role == "function") {
      const json* name = field(msg, "name");
      if (name == nullptr || !name->is_string()) invalid(param + ".name", fmt::format("'{}.name' must be a string", param));
      ToolResultTurn turn = tool_result_turn("", name->get<std::string>(), content, format);
      role = std::move(turn.role);
      content = std::move(turn.content);
      merge = format == ToolFormat::Hermes;
    }
    if (merge && merged_results && !messages.empty()) {
      messages.back().content += "\n" + content;
    } else {
      messages.push_back({role, content});
    }
    merged_results = merge;
  }
  return messages;
}

// Refuses, with a 400 naming it, every top-level field the endpoint does not know, and those it
// knows only to refuse (audio output, reasoning settings, web search, ...). A null value counts
// as absent for a known field, but an unknown field is refused whatever its value.
void check_fields(const json& body, bool chat) {
  for (const Refused& r : kRefusedFields) {
    if (field(body, std::string(r.name).c_str()) != nullptr) invalid(std::string(r.name), std::string(r.reason));
  }
  const std::span<const std::string_view> known = chat ? std::span<const std::string_view>(kChatFields)
                                                      : std::span<const std::string_view>(kCompletionFields);
  for (const auto& item : body.items()) {
    const std::string& key = item.key();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    // A null refused field counts as absent on chat, where OpenAI knows them all.
    bool refused = false;
    for (const Refused& r : kRefusedFields) refused = refused || r.name == key;
    if (refused && chat) continue;
    invalid(key, fmt::format("Unrecognized request argument supplied: {} (this server neither honours nor accepts it; "
                             "the fields of {} are listed in hearth's docs/API.md)",
                             key, chat ? "/v1/chat/completions" : "/v1/completions"));
  }
}

// The fields accepted without effect on the output still have their types checked.
void check_no_effect_fields(const json& body, bool chat) {
  string_field(body, "user");
  if (!chat) return;
  boolean(body, "store", false);
  if (const json* metadata = object_field(body, "metadata")) {
    for (const auto& item : metadata->items()) {
      if (!item.value().is_string()) invalid("metadata", fmt::format("'metadata.{}' must be a string", item.key()));
    }
  }
  string_field(body, "service_tier");
  string_field(body, "safety_identifier");
  string_field(body, "prompt_cache_key");
  string_field(body, "prompt_cache_retention");
  object_field(body, "prompt_cache_options");
  object_field(body, "prediction");
  if (const json* modalities = field(body, "modalities")) {
    if (!modalities->is_array()) invalid("modalities", "'modalities' must be an array of strings");
    for (const json& m : *modalities) {
      if (m != "text") invalid("modalities", fmt::format("only the 'text' modality is supported, not {}", m.dump()));
    }
  }
}

// OpenAI's logit_bias: {"token id": bias, ...}, ids as decimal strings, biases from -100 to 100;
// sorted by token. Token ids are checked against the vocabulary by the server, which knows it.
std::vector<std::pair<engine::Token, float>> parse_logit_bias(const json& body) {
  std::vector<std::pair<engine::Token, float>> out;
  const json* lb = field(body, "logit_bias");
  if (lb == nullptr) return out;
  if (!lb->is_object()) {
    invalid("logit_bias", fmt::format("'logit_bias' must be an object mapping token ids (as strings) to a bias from "
                                      "-100 to 100, not {}",
                                      type_name(*lb)));
  }
  if (lb->size() > engine::kMaxLogitBias) {
    invalid("logit_bias", fmt::format("'logit_bias' may hold at most {} tokens; got {}", engine::kMaxLogitBias, lb->size()));
  }
  for (const auto& item : lb->items()) {
    const std::string& key = item.key();
    int64_t id = 0;
    const bool digits = !key.empty() && key.size() <= 10 &&
                        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits) id = std::stoll(key);
    if (!digits || id > std::numeric_limits<int32_t>::max()) {
      invalid("logit_bias", fmt::format("'logit_bias' keys must be token ids (non-negative integers); got '{}'", key));
    }
    const json& v = item.value();
    if (!v.is_number()) {
      invalid("logit_bias", fmt::format("'logit_bias' of token {} must be a number from -100 to 100, not {}", key, type_name(v)));
    }
    const double bias = v.get<double>();
    if (!std::isfinite(bias) || std::fabs(bias) > static_cast<double>(engine::kMaxLogitBiasValue)) {
      invalid("logit_bias", fmt::format("'logit_bias' of token {} must be from -100 to 100; got {}", key, v.dump()));
    }
    out.emplace_back(static_cast<engine::Token>(id), static_cast<float>(bias));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].first == out[i - 1].first) {
      invalid("logit_bias", fmt::format("'logit_bias' names token {} twice", out[i].first));
    }
  }
  return out;
}

}  // namespace

void add_tools_prompt(std::vector<engine::ChatMessage>& messages, const ToolSpec& tools) {
  const std::string prompt = tools_prompt(tools);
  if (prompt.empty()) return;
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (tools.format == ToolFormat::Llama3) {
    // Llama 3.1: "Environment: ipython" opens the system message; the tools and how to call them
    // open the first user message.
    if (has_system) {
      messages.front().content = "Environment: ipython\n\n" + messages.front().content;
    } else {
      messages.insert(messages.begin(), {"system", "Environment: ipython"});
    }
    for (engine::ChatMessage& m : messages) {
      if (m.role == "user") {
        m.content = prompt + m.content;
        return;
      }
    }
    messages.push_back({"user", prompt});
    return;
  }
  if (has_system) {
    messages.front().content += "\n\n" + prompt;
  } else {
    messages.insert(messages.begin(), {"system", prompt});
  }
}

// The grammar (GBNF) that constrains the output, from whichever of `grammar`, `json_schema`
// (llama.cpp's extensions) and `response_format` (json_object / json_schema) the request gives;
// empty when none. At most one of them may constrain; each is compiled and parsed here so that
// a bad grammar or an unsupported schema keyword is a 400 naming the field (and the keyword).
std::string parse_constraint(const json& body) {
  std::vector<std::string> given;
  std::string gbnf;
  const auto from_schema = [&](const json& schema, const std::string& param) {
    try {
      gbnf = engine::grammar::json_schema_to_gbnf(schema);
    } catch (const engine::grammar::SchemaError& e) {
      throw ApiError(400, e.what(), "invalid_request_error", param, "unsupported_schema");
    }
  };
  std::string param;
  if (const json* g = field(body, "grammar")) {
    if (!g->is_string() || g->get<std::string>().empty()) invalid("grammar", "'grammar' must be a non-empty string (GBNF)");
    if (g->get<std::string>().size() > engine::grammar::kMaxGrammarBytes) {
      invalid("grammar", fmt::format("'grammar' is longer than {} bytes", engine::grammar::kMaxGrammarBytes));
    }
    gbnf = g->get<std::string>();
    given.push_back("grammar");
    param = "grammar";
  }
  if (const json* js = field(body, "json_schema")) {
    if (!js->is_object() && !js->is_boolean()) invalid("json_schema", "'json_schema' must be a JSON Schema object");
    given.push_back("json_schema");
    param = "json_schema";
    from_schema(*js, "json_schema");
  }
  if (const json* rf = field(body, "response_format")) {
    if (!rf->is_object() || !rf->contains("type") || !(*rf)["type"].is_string()) {
      invalid("response_format", "'response_format' must be an object with a 'type'");
    }
    const std::string type = (*rf)["type"].get<std::string>();
    if (type == "json_object") {
      given.push_back("response_format");
      param = "response_format";
      gbnf = engine::grammar::json_object_gbnf();
    } else if (type == "json_schema") {
      const auto spec = rf->find("json_schema");
      if (spec == rf->end() || !spec->is_object()) {
        invalid("response_format", "response_format of type 'json_schema' needs a 'json_schema' object");
      }
      const auto name = spec->find("name");
      if (name == spec->end() || !name->is_string() || name->get<std::string>().empty() ||
          name->get<std::string>().size() > 64) {
        invalid("response_format", "'response_format.json_schema.name' must be a string of 1 to 64 characters");
      }
      for (const auto& item : spec->items()) {
        if (item.key() != "name" && item.key() != "schema" && item.key() != "strict" && item.key() != "description") {
          invalid("response_format", fmt::format("unknown field 'response_format.json_schema.{}'", item.key()));
        }
      }
      if (const auto strict = spec->find("strict"); strict != spec->end() && !strict->is_boolean() && !strict->is_null()) {
        invalid("response_format", "'response_format.json_schema.strict' must be a boolean");
      }
      given.push_back("response_format");
      param = "response_format";
      const auto schema = spec->find("schema");
      if (schema == spec->end() || schema->is_null()) {
        gbnf = engine::grammar::json_object_gbnf();  // no schema: any JSON object
      } else {
        if (!schema->is_object() && !schema->is_boolean()) {
          invalid("response_format", "'response_format.json_schema.schema' must be a JSON Schema object");
        }
        from_schema(*schema, "response_format");
      }
    } else if (type != "text") {
      invalid("response_format", fmt::format("unknown response_format type '{}'", type));
    }
  }
  if (given.size() > 1) {
    invalid(given[1], fmt::format("'{}' and '{}' both constrain the output: give one of them", given[0], given[1]));
  }
  if (!gbnf.empty()) {
    try {
      engine::grammar::parse_gbnf(gbnf);
    } catch (const engine::grammar::GrammarError& e) {
      throw ApiError(400, fmt::format("'{}': {}", param, e.what()), "invalid_request_error", param);
    }
  }
  return gbnf;
}

CompletionRequest parse_completion_request(const json& body, bool chat, ToolFormat tool_format) {
  if (!body.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, not {}", type_name(body)));
  check_fields(body, chat);
  check_no_effect_fields(body, chat);
  CompletionRequest r;
  r.chat = chat;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) invalid("model", fmt::format("'model' must be a string, not {}", type_name(*m)));
    r.model = m->get<std::string>();
  }
  if (chat) {
    r.messages = parse_messages(body, tool_format);
  } else {
    const json* p = field(body, "prompt");
    if (p == nullptr) invalid("prompt", "'prompt' is required");
    if (p->is_string()) {
      r.prompt_text = p->get<std::string>();
    } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
      r.prompt_text = (*p)[0].get<std::string>();
    } else if (p->is_array() && !p->empty() && std::all_of(p->begin(), p->end(), [](const json& t) { return t.is_number_integer(); })) {
      std::vector<engine::Token> tokens;
      for (const json& t : *p) {
        const int64_t id = t.get<int64_t>();
        if (id < 0 || id > std::numeric_limits<int32_t>::max()) invalid("prompt", fmt::format("token id {} is out of range", id));
        tokens.push_back(static_cast<engine::Token>(id));
      }
      r.prompt_tokens = std::move(tokens);
    } else if (p->is_array() && p->size() > 1) {
      invalid("prompt", "several prompts in one request are not supported: send one request per prompt");
    } else {
      invalid("prompt", "'prompt' must be a string, an array of one string, or an array of token ids");
    }
    if (boolean(body, "echo", false)) invalid("echo", "'echo' is not supported");
    if (field(body, "suffix") != nullptr) invalid("suffix", "'suffix' is not supported");
  }

  r.stream = boolean(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) invalid("stream_options", "'stream_options' must be an object");
    if (!r.stream) invalid("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = boolean(*so, "include_usage", false);
    boolean(*so, "include_obfuscation", true);  // accepted: hearth adds no obfuscation field either way
    for (const auto& item : so->items()) {
      if (item.key() != "include_usage" && item.key() != "include_obfuscation") {
        invalid("stream_options." + item.key(), fmt::format("Unrecognized stream option: {}", item.key()));
      }
    }
  }
  const int64_t max_tokens = integer(body, "max_tokens", 1, std::numeric_limits<int32_t>::max(), -1);
  const int64_t max_completion = integer(body, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max(), -1);
  r.max_tokens = static_cast<int32_t>(max_completion > 0 ? max_completion : max_tokens);

  engine::SamplingParams& s = r.sampling;
  s.temperature = static_cast<float>(number(body, "temperature", 0.0, 2.0, s.temperature));
  s.top_p = static_cast<float>(number(body, "top_p", 0.0, 1.0, s.top_p));
  s.top_k = static_cast<int32_t>(integer(body, "top_k", 0, 1 << 20, s.top_k));
  s.min_p = static_cast<float>(number(body, "min_p", 0.0, 1.0, s.min_p));
  s.presence_penalty = static_cast<float>(number(body, "presence_penalty", -2.0, 2.0, 0.0));
  s.frequency_penalty = static_cast<float>(number(body, "frequency_penalty", -2.0, 2.0, 0.0));
  s.repeat_penalty = static_cast<float>(number(body, "repeat_penalty", 0.0, 10.0, s.repeat_penalty));
  if (s.repeat_penalty <= 0.0f) invalid("repeat_penalty", "'repeat_penalty' must be greater than 0 (1 disables it)");
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) invalid("seed", fmt::format("'seed' must be an integer, not {}", type_name(*seed)));
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    r.seed_given = true;
  }

  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > kMaxStops) invalid("stop", fmt::format("'stop' may hold at most {} strings", kMaxStops));
      for (const json& x : *stop) {
        if (!x.is_string()) invalid("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      invalid("stop", fmt::format("'stop' must be a string or an array of strings, not {}", type_name(*stop)));
    }
    for (const std::string& x : r.stop) {
      if (x.empty()) invalid("stop", "stop strings must not be empty");
      if (x.size() > kMaxStopBytes) invalid("stop", fmt::format("stop strings are limited to {} bytes", kMaxStopBytes));
    }
  }

  r.n = static_cast<int32_t>(integer(body, "n", 1, kMaxN, 1));
  if (chat) {
    r.logprobs = boolean(body, "logprobs", false);
    r.top_logprobs = static_cast<int32_t>(integer(body, "top_logprobs", 0, kMaxTopLogprobs, 0));
    if (field(body, "top_logprobs") != nullptr && !r.logprobs) {
      invalid("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    }
  } else if (field(body, "logprobs") != nullptr) {
    r.logprobs = true;
    r.top_logprobs = static_cast<int32_t>(integer(body, "logprobs", 0, kMaxTopLogprobs, 0));
  }
  s.n_logprobs = r.top_logprobs;
  s.logit_bias = parse_logit_bias(body);
  const int64_t best_of = integer(body, "best_of", 1, kMaxN, r.n);
  if (best_of != r.n) invalid("best_of", "'best_of' other than 'n' is not supported");
  r.ignore_eos = boolean(body, "ignore_eos", false);

  r.grammar = parse_constraint(body);
  if (!r.grammar.empty() && r.ignore_eos) {
    invalid("ignore_eos", "'ignore_eos' cannot be combined with a grammar or JSON constraint (the output ends where the grammar does)");
  }
  if (chat) {
    r.tools = parse_tools(body, tool_format);
    if (r.tools) {
      add_tools_prompt(r.messages, *r.tools);
      if (std::string gbnf = tool_call_grammar(*r.tools); !gbnf.empty()) {
        const char* choice = r.tools->legacy ? "function_call" : "tool_choice";
        if (!r.grammar.empty()) {
          invalid(choice, fmt::format("'{}' {} constrains the output to a tool call, as does a grammar or response_format: give one of them",
                                      choice, r.tools->choice == ToolSpec::Choice::Named ? "naming a function" : "\"required\""));
        }
        if (r.ignore_eos) invalid("ignore_eos", "'ignore_eos' cannot be combined with a constrained tool call");
        try {
          engine::grammar::parse_gbnf(gbnf);
        } catch (const engine::grammar::GrammarError& e) {  // a fault of hearth's, not the request's
          throw ApiError(500, fmt::format("the grammar built for the tool call does not parse: {}", e.what()), "server_error", "tools");
        }
        r.grammar = std::move(gbnf);
      }
    }
  }
  return r;
}

}  // namespace hearth::server
