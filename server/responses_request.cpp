#include "server/responses_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <span>
#include <string_view>

namespace hearth::server {

using json = nlohmann::ordered_json;

namespace {

[[noreturn]] void invalid(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

const json* present(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::string string_of(const json& body, const char* name, const std::string& param) {
  const json* v = present(body, name);
  if (v == nullptr || !v->is_string()) invalid(param, fmt::format("'{}' must be a string", param));
  return v->get<std::string>();
}

std::span<const std::string_view> kw(std::initializer_list<std::string_view> list) { return {list.begin(), list.size()}; }

// Refuses every field not in `known`, naming it.
void only_known(const json& object, std::span<const std::string_view> known, const std::string& prefix,
                const char* endpoint) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), std::string_view(item.key())) != known.end()) continue;
    const std::string name = prefix.empty() ? item.key() : prefix + "." + item.key();
    invalid(name, fmt::format("Unrecognized request argument supplied: {} (this server neither honours nor accepts it; "
                              "the fields of {} are listed in hearth's docs/API.md)",
                              name, endpoint));
  }
}

// Runs the chat request parser over the translated body; its errors name the fields of the
// endpoint's own body (`renames`: chat field -> endpoint field).
CompletionRequest parse_translated(const json& chat_body, ToolFormat format,
                                   std::initializer_list<std::pair<std::string_view, std::string_view>> renames) {
  try {
    return parse_completion_request(chat_body, true, format);
  } catch (const ApiError& e) {
    std::string param = e.param;
    for (const auto& [from, to] : renames) {
      if (param.starts_with(from)) {
        param = std::string(to) + param.substr(from.size());
        break;
      }
    }
    throw ApiError(e.status, e.what(), e.type, param, e.code);
  }
}

// --- Responses API ---

constexpr std::string_view kResponsesFields[] = {
    // honoured
    "model", "input", "instructions", "stream", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "previous_response_id", "store", "text", "include", "top_logprobs", "truncation",
    "metadata", "stream_options", "background", "reasoning",
    // accepted without effect
    "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier"};

// Text of a message's content: a string, or input_text / output_text parts.
std::string item_text(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) invalid(param, fmt::format("'{}' must be a string or an array of content parts", param));
  std::string text;
  for (size_t p = 0; p < content.size(); ++p) {
    const json& part = content[p];
    const std::string pp = fmt::format("{}[{}]", param, p);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      invalid(pp, fmt::format("'{}' must be an object with a 'type'", pp));
    }
    const std::string type = part["type"].get<std::string>();
    if (type == "input_text" || type == "output_text" || type == "text") {
      text += string_of(part, "text", pp + ".text");
    } else if (type == "refusal") {
      text += string_of(part, "refusal", pp + ".refusal");
    } else {
      invalid(pp + ".type", fmt::format("content parts of type '{}' are not supported (text only)", type));
    }
  }
  return text;
}

// The input items as chat-completions messages (appended to `out`).
void input_messages(const json& input, json& out) {
  if (input.is_string()) {
    out.push_back({{"role", "user"}, {"content", input}});
    return;
  }
  if (!input.is_array()) invalid("input", "'input' must be a string or an array of input items");
  for (size_t i = 0; i < input.size(); ++i) {
    const json& item = input[i];
    const std::string param = fmt::format("input[{}]", i);
    if (!item.is_object()) invalid(param, fmt::format("'{}' must be an object", param));
    std::string type = "message";
    if (const json* t = present(item, "type")) {
      if (!t->is_string()) invalid(param + ".type", fmt::format("'{}.type' must be a string", param));
      type = t->get<std::string>();
    }
    if (type == "message") {
      const std::string role = string_of(item, "role", param + ".role");
      if (role != "user" && role != "system" && role != "developer" && role != "assistant") {
        invalid(param + ".role", fmt::format("role '{}' is not supported (user, system, developer, assistant)", role));
      }
      const json* content = present(item, "content");
      if (content == nullptr) invalid(param + ".content", fmt::format("'{}.content' is required", param));
      const std::string text = item_text(*content, param + ".content");
      // An assistant's text right before its calls, or after them, joins the same turn.
      if (role == "assistant" && !out.empty() && out.back()["role"] == "assistant" && out.back()["content"].is_null()) {
        out.back()["content"] = text;
      } else {
        out.push_back({{"role", role}, {"content", text}});
      }
    } else if (type == "function_call") {
      const std::string call_id = string_of(item, "call_id", param + ".call_id");
      const std::string name = string_of(item, "name", param + ".name");
      const std::string arguments = string_of(item, "arguments", param + ".arguments");
      json call = {{"id", call_id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
      if (out.empty() || out.back()["role"] != "assistant") out.push_back({{"role", "assistant"}, {"content", nullptr}});
      if (!out.back().contains("tool_calls")) out.back()["tool_calls"] = json::array();
      out.back()["tool_calls"].push_back(std::move(call));
    } else if (type == "function_call_output") {
      const std::string call_id = string_of(item, "call_id", param + ".call_id");
      const json* output = present(item, "output");
      if (output == nullptr) invalid(param + ".output", fmt::format("'{}.output' is required", param));
      out.push_back({{"role", "tool"}, {"tool_call_id", call_id}, {"content", item_text(*output, param + ".output")}});
    } else {
      invalid(param + ".type",
              fmt::format("input items of type '{}' are not supported (message, function_call, function_call_output)", type));
    }
  }
}

// The Responses API's function tools as chat tools.
json chat_tools(const json& tools) {
  if (!tools.is_array()) invalid("tools", "'tools' must be an array");
  json out = json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string param = fmt::format("tools[{}]", i);
    if (!t.is_object() || !t.contains("type") || t["type"] != "function") {
      invalid(param + ".type", fmt::format("'{}.type' must be \"function\" (the only tool type offered: no hosted tools)", param));
    }
    const ToolFunction f = parse_tool_function(t, param, {"type"});
    json fn = {{"name", f.name}, {"parameters", f.parameters}};
    if (!f.description.empty()) fn["description"] = f.description;
    out.push_back({{"type", "function"}, {"function", fn}});
  }
  return out;
}

json chat_tool_choice(const json& choice) {
  if (choice.is_string()) return choice;
  if (!choice.is_object() || !choice.contains("type") || choice["type"] != "function" || !choice.contains("name") ||
      !choice["name"].is_string()) {
    invalid("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": ...}");
  }
  return {{"type", "function"}, {"function", {{"name", choice["name"]}}}};
}

}  // namespace

std::optional<std::string> previous_response_id(const json& body) {
  if (!body.is_object()) return std::nullopt;
  const json* p = present(body, "previous_response_id");
  if (p == nullptr) return std::nullopt;
  if (!p->is_string()) invalid("previous_response_id", "'previous_response_id' must be a string");
  return p->get<std::string>();
}

ResponsesRequest parse_responses_request(const json& body, ToolFormat format, const json* previous) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  only_known(body, kResponsesFields, "", "/v1/responses");
  ResponsesRequest r;
  json chat = json::object();
  if (const json* m = present(body, "model")) {
    if (!m->is_string()) invalid("model", "'model' must be a string");
    chat["model"] = *m;
  }
  if (const json* i = present(body, "instructions")) {
    if (!i->is_string()) invalid("instructions", "'instructions' must be a string");
    r.instructions = i->get<std::string>();
  }
  r.previous_response_id = previous_response_id(body);
  const json* input = present(body, "input");
  if (input == nullptr) invalid("input", "'input' is required");
  r.conversation = previous != nullptr ? *previous : json::array();
  input_messages(*input, r.conversation);
  json messages = json::array();
  if (r.instructions) messages.push_back({{"role", "system"}, {"content", *r.instructions}});
  for (const json& m : r.conversation) messages.push_back(m);
  if (messages.empty()) invalid("input", "'input' must contain at least one item");
  chat["messages"] = messages;

  if (const json* s = present(body, "stream")) chat["stream"] = *s;
  if (const json* so = present(body, "stream_options")) {
    if (!so->is_object()) invalid("stream_options", "'stream_options' must be an object");
    only_known(*so, kw({"include_obfuscation"}), "stream_options", "/v1/responses");
  }
  if (const json* m = present(body, "max_output_tokens")) {
    if (!m->is_number_integer() || m->get<int64_t>() < 1 || m->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      invalid("max_output_tokens", "'max_output_tokens' must be a positive integer");
    }
    r.max_output_tokens = m->get<int32_t>();
    chat["max_completion_tokens"] = *m;
  }
  for (const char* name : {"temperature", "top_p"}) {
    if (const json* v = present(body, name)) chat[name] = *v;
  }
  if (const json* t = present(body, "tools")) {
    r.tools = *t;
    chat["tools"] = chat_tools(*t);
  }
  if (const json* c = present(body, "tool_choice")) {
    r.tool_choice = *c;
    chat["tool_choice"] = chat_tool_choice(*c);
  }
  if (const json* p = present(body, "parallel_tool_calls")) {
    chat["parallel_tool_calls"] = *p;
    if (p->is_boolean()) r.parallel_tool_calls = p->get<bool>();
  }
  // An empty tools list with a tool_choice or parallel_tool_calls is what the Agents SDK sends
  // for an agent without tools: nothing to choose from, so they have no effect.
  if (chat.contains("tools") && chat["tools"].empty()) {
    chat.erase("tools");
    chat.erase("tool_choice");
    chat.erase("parallel_tool_calls");
  }
  if (const json* s = present(body, "store")) {
    if (!s->is_boolean()) invalid("store", "'store' must be a boolean");
    r.store = s->get<bool>();
  }
  if (const json* m = present(body, "metadata")) {
    if (!m->is_object()) invalid("metadata", "'metadata' must be an object of strings");
    for (const auto& item : m->items()) {
      if (!item.value().is_string()) invalid("metadata", fmt::format("'metadata.{}' must be a string", item.key()));
    }
    r.metadata = *m;
  }
  if (const json* t = present(body, "text")) {
    if (!t->is_object()) invalid("text", "'text' must be an object");
    only_known(*t, kw({"format", "verbosity"}), "text", "/v1/responses");
    if (const json* v = present(*t, "verbosity"); v != nullptr && *v != "medium") {
      invalid("text.verbosity", "'text.verbosity' is not supported by this server (only \"medium\", the default)");
    }
    if (const json* f = present(*t, "format")) {
      if (!f->is_object() || !f->contains("type") || !(*f)["type"].is_string()) {
        invalid("text.format", "'text.format' must be an object with a 'type'");
      }
      r.text_format = *f;
      const std::string type = (*f)["type"].get<std::string>();
      if (type == "json_schema") {
        json spec = *f;
        spec.erase("type");
        chat["response_format"] = {{"type", "json_schema"}, {"json_schema", spec}};
      } else {
        chat["response_format"] = {{"type", type}};
        only_known(*f, kw({"type"}), "text.format", "/v1/responses");
      }
    }
  }
  bool logprobs = false;
  if (const json* inc = present(body, "include")) {
    if (!inc->is_array()) invalid("include", "'include' must be an array");
    for (const json& x : *inc) {
      if (x == "message.output_text.logprobs") {
        logprobs = true;
      } else {
        invalid("include", fmt::format("'include' value {} is not supported (only \"message.output_text.logprobs\")", x.dump()));
      }
    }
  }
  if (const json* t = present(body, "top_logprobs")) {
    chat["top_logprobs"] = *t;
    logprobs = true;
  }
  if (logprobs) chat["logprobs"] = true;
  if (const json* t = present(body, "truncation"); t != nullptr && *t != "disabled") {
    invalid("truncation", "'truncation' other than \"disabled\" is not supported: a conversation longer than the context is refused");
  }
  if (const json* b = present(body, "background"); b != nullptr && *b != false) {
    invalid("background", "'background' responses are not supported by this server");
  }
  if (const json* reasoning = present(body, "reasoning")) {
    if (!reasoning->is_object()) invalid("reasoning", "'reasoning' must be an object");
    for (const auto& item : reasoning->items()) {
      if (!item.value().is_null()) invalid("reasoning", "'reasoning' is not supported: this server's models have no reasoning setting");
    }
  }
  if (const json* u = present(body, "user")) {
    if (!u->is_string()) invalid("user", "'user' must be a string");
    r.user = u->get<std::string>();
  }
  for (const char* name : {"safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier"}) {
    if (const json* v = present(body, name); v != nullptr && !v->is_string()) invalid(name, fmt::format("'{}' must be a string", name));
  }
  r.chat = parse_translated(chat, format,
                            {{"messages", "input"}, {"max_completion_tokens", "max_output_tokens"}, {"response_format", "text.format"}});
  return r;
}

// --- Messages API (Anthropic) ---

namespace {

constexpr std::string_view kMessagesFields[] = {
    // honoured (temperature, top_p and top_k are gone from Anthropic's current API; older clients send them)
    "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k", "stop_sequences", "tools",
    "tool_choice", "output_config", "thinking", "speed",
    // accepted without effect: caching is automatic here (the prefix cache), the rest names the caller
    "metadata", "service_tier", "cache_control", "inference_geo", "user_profile_id", "workspace_id"};

std::string block_text(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) invalid(param, fmt::format("'{}' must be a string or an array of content blocks", param));
  std::string text;
  for (size_t b = 0; b < content.size(); ++b) {
    const json& block = content[b];
    const std::string bp = fmt::format("{}.{}", param, b);
    if (!block.is_object() || block.value("type", "") != "text") {
      invalid(bp + ".type", fmt::format("'{}' must be a text block (text only)", bp));
    }
    text += string_of(block, "text", bp + ".text");
  }
  return text;
}

json anthropic_messages(const json& list) {
  if (!list.is_array() || list.empty()) invalid("messages", "'messages' must be a non-empty array");
  json out = json::array();
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    const std::string param = fmt::format("messages.{}", i);
    if (!m.is_object()) invalid(param, fmt::format("'{}' must be an object", param));
    const std::string role = string_of(m, "role", param + ".role");
    if (role != "user" && role != "assistant") invalid(param + ".role", "roles are 'user' and 'assistant' (the system prompt is 'system')");
    const json* content = present(m, "content");
    if (content == nullptr) invalid(param + ".content", fmt::format("'{}.content' is required", param));
    if (content->is_string()) {
      out.push_back({{"role", role}, {"content", *content}});
      continue;
    }
    if (!content->is_array()) invalid(param + ".content", "'content' must be a string or an array of content blocks");
    std::string text;
    json calls = json::array();
    for (size_t b = 0; b < content->size(); ++b) {
      const json& block = (*content)[b];
      const std::string bp = fmt::format("{}.content.{}", param, b);
      const std::string type = block.is_object() ? block.value("type", "") : "";
      if (type == "text") {
        text += string_of(block, "text", bp + ".text");
      } else if (type == "tool_use" && role == "assistant") {
        const json* input = present(block, "input");
        if (input == nullptr || !input->is_object()) invalid(bp + ".input", fmt::format("'{}.input' must be an object", bp));
        calls.push_back({{"id", string_of(block, "id", bp + ".id")},
                         {"type", "function"},
                         {"function", {{"name", string_of(block, "name", bp + ".name")}, {"arguments", input->dump()}}}});
      } else if (type == "tool_result" && role == "user") {
        std::string result;
        if (const json* c = present(block, "content")) result = block_text(*c, bp + ".content");
        if (block.value("is_error", false)) result = "Error: " + result;
        out.push_back({{"role", "tool"}, {"tool_call_id", string_of(block, "tool_use_id", bp + ".tool_use_id")}, {"content", result}});
      } else {
        invalid(bp + ".type", fmt::format("content blocks of type '{}' are not supported in {} messages (text, tool_use, tool_result)",
                                          type, role));
      }
    }
    if (role == "assistant") {
      json msg = {{"role", "assistant"}, {"content", text.empty() && !calls.empty() ? json(nullptr) : json(text)}};
      if (!calls.empty()) msg["tool_calls"] = calls;
      out.push_back(std::move(msg));
    } else if (!text.empty() || out.empty() || out.back()["role"] != "tool") {
      out.push_back({{"role", "user"}, {"content", text}});
    }
  }
  return out;
}

}  // namespace

MessagesRequest parse_messages_request(const json& body, ToolFormat format) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  only_known(body, kMessagesFields, "", "/v1/messages");
  MessagesRequest r;
  json chat = json::object();
  if (const json* m = present(body, "model")) {
    if (!m->is_string()) invalid("model", "'model' must be a string");
    chat["model"] = *m;
  }
  const json* max_tokens = present(body, "max_tokens");
  if (max_tokens == nullptr) invalid("max_tokens", "'max_tokens' is required");
  chat["max_completion_tokens"] = *max_tokens;
  json messages = json::array();
  if (const json* s = present(body, "system")) messages.push_back({{"role", "system"}, {"content", block_text(*s, "system")}});
  for (json& m : anthropic_messages(present(body, "messages") ? body["messages"] : json())) messages.push_back(std::move(m));
  chat["messages"] = messages;
  if (const json* s = present(body, "stream")) chat["stream"] = *s;
  if (const json* t = present(body, "temperature")) {
    if (t->is_number() && t->get<double>() > 1.0) invalid("temperature", "'temperature' must be between 0 and 1");
    chat["temperature"] = *t;
  }
  for (const char* name : {"top_p", "top_k"}) {
    if (const json* v = present(body, name)) chat[name] = *v;
  }
  if (const json* s = present(body, "stop_sequences")) {
    if (!s->is_array()) invalid("stop_sequences", "'stop_sequences' must be an array of strings");
    if (!s->empty()) chat["stop"] = *s;
  }
  if (const json* tools = present(body, "tools")) {
    if (!tools->is_array()) invalid("tools", "'tools' must be an array");
    json list = json::array();
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& t = (*tools)[i];
      const std::string param = fmt::format("tools.{}", i);
      if (!t.is_object()) invalid(param, fmt::format("'{}' must be an object", param));
      if (const json* type = present(t, "type"); type != nullptr && *type != "custom") {
        invalid(param + ".type", fmt::format("tools of type {} are not supported (client tools only)", type->dump()));
      }
      json fn = {{"name", string_of(t, "name", param + ".name")}};
      if (const json* d = present(t, "description")) fn["description"] = *d;
      const json* schema = present(t, "input_schema");
      if (schema == nullptr || !schema->is_object()) invalid(param + ".input_schema", fmt::format("'{}.input_schema' must be an object", param));
      fn["parameters"] = *schema;
      for (const auto& item : t.items()) {
        if (item.key() != "name" && item.key() != "description" && item.key() != "input_schema" && item.key() != "type" &&
            item.key() != "cache_control" && item.key() != "strict") {
          invalid(param + "." + item.key(), fmt::format("unknown field '{}.{}'", param, item.key()));
        }
      }
      list.push_back({{"type", "function"}, {"function", fn}});
    }
    if (!list.empty()) chat["tools"] = list;
  }
  if (const json* c = present(body, "tool_choice")) {
    if (!c->is_object() || !c->contains("type") || !(*c)["type"].is_string()) invalid("tool_choice", "'tool_choice' must be an object with a 'type'");
    const std::string type = (*c)["type"].get<std::string>();
    if (!chat.contains("tools")) {
      if (type != "none" && type != "auto") invalid("tool_choice", "'tool_choice' needs 'tools'");
    } else if (type == "auto") {
      chat["tool_choice"] = "auto";
    } else if (type == "any") {
      chat["tool_choice"] = "required";
    } else if (type == "none") {
      chat["tool_choice"] = "none";
    } else if (type == "tool") {
      chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", string_of(*c, "name", "tool_choice.name")}}}};
    } else {
      invalid("tool_choice.type", fmt::format("'tool_choice.type' must be auto, any, tool or none, not '{}'", type));
    }
    if (const json* d = present(*c, "disable_parallel_tool_use")) {
      if (!d->is_boolean()) invalid("tool_choice.disable_parallel_tool_use", "'disable_parallel_tool_use' must be a boolean");
      if (chat.contains("tools")) chat["parallel_tool_calls"] = !d->get<bool>();
    }
  }
  if (const json* m = present(body, "metadata")) {
    if (!m->is_object()) invalid("metadata", "'metadata' must be an object");
    only_known(*m, kw({"user_id"}), "metadata", "/v1/messages");
  }
  if (const json* t = present(body, "thinking"); t != nullptr && !(t->is_object() && t->value("type", "") == "disabled")) {
    invalid("thinking", "extended thinking is not supported by this server's models");
  }
  for (const char* name : {"service_tier", "inference_geo", "user_profile_id", "workspace_id"}) {
    if (const json* v = present(body, name); v != nullptr && !v->is_string()) invalid(name, fmt::format("'{}' must be a string", name));
  }
  if (const json* c = present(body, "cache_control"); c != nullptr && !c->is_object()) invalid("cache_control", "'cache_control' must be an object");
  if (const json* s = present(body, "speed"); s != nullptr && *s != "standard") {
    invalid("speed", "'speed' other than \"standard\" is not offered by this server");
  }
  if (const json* oc = present(body, "output_config")) {
    if (!oc->is_object()) invalid("output_config", "'output_config' must be an object");
    only_known(*oc, kw({"effort", "format"}), "output_config", "/v1/messages");
    if (present(*oc, "effort") != nullptr) {
      invalid("output_config.effort", "'output_config.effort' is not supported: this server's models have no effort setting");
    }
    if (const json* f = present(*oc, "format")) {
      if (!f->is_object() || f->value("type", "") != "json_schema" || !f->contains("schema")) {
        invalid("output_config.format", "'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}");
      }
      chat["response_format"] = {{"type", "json_schema"}, {"json_schema", {{"name", "output"}, {"schema", (*f)["schema"]}}}};
    }
  }
  r.chat = parse_translated(chat, format,
                            {{"max_completion_tokens", "max_tokens"}, {"stop", "stop_sequences"}, {"messages[", "messages."},
                             {"response_format", "output_config.format"}});
  r.stop_sequences = r.chat.stop;
  return r;
}

}  // namespace hearth::server
