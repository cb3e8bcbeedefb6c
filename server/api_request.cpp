#include "server/api_request.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace hearth::server {

using nlohmann::json;

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

std::vector<engine::ChatMessage> parse_messages(const json& body) {
  const json* m = field(body, "messages");
  if (m == nullptr) invalid("messages", "'messages' is required");
  if (!m->is_array()) invalid("messages", fmt::format("'messages' must be an array, not {}", type_name(*m)));
  if (m->empty()) invalid("messages", "'messages' must contain at least one message");
  std::vector<engine::ChatMessage> messages;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!msg.is_object()) invalid(param, fmt::format("'{}' must be an object, not {}", param, type_name(msg)));
    if (!msg.contains("role") || !msg["role"].is_string()) invalid(param + ".role", fmt::format("'{}.role' must be a string", param));
    std::string role = msg["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role != "system" && role != "user" && role != "assistant") {
      invalid(param + ".role", fmt::format("role '{}' is not supported (system, developer, user, assistant)", role));
    }
    if (!msg.contains("content")) invalid(param + ".content", fmt::format("'{}.content' is required", param));
    messages.push_back({role, message_content(msg["content"], i)});
  }
  return messages;
}

}  // namespace

CompletionRequest parse_completion_request(const json& body, bool chat) {
  if (!body.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, not {}", type_name(body)));
  CompletionRequest r;
  r.chat = chat;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) invalid("model", fmt::format("'model' must be a string, not {}", type_name(*m)));
    r.model = m->get<std::string>();
  }
  if (chat) {
    r.messages = parse_messages(body);
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
  const int64_t best_of = integer(body, "best_of", 1, kMaxN, r.n);
  if (best_of != r.n) invalid("best_of", "'best_of' other than 'n' is not supported");
  if (const json* user = field(body, "user"); user != nullptr && !user->is_string()) {
    invalid("user", "'user' must be a string");
  }
  r.ignore_eos = boolean(body, "ignore_eos", false);

  if (const json* tools = field(body, "tools"); tools != nullptr && !(tools->is_array() && tools->empty())) {
    invalid("tools", "tool calls are not supported by this server");
  }
  if (const json* rf = field(body, "response_format")) {
    if (!rf->is_object() || !rf->contains("type") || (*rf)["type"] != "text") {
      invalid("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
  }
  return r;
}

}  // namespace hearth::server
