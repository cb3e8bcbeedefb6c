#include "server/tool_calls.h"

#include <fmt/format.h>

#include <random>
#include <set>

#include "engine/grammar/json_schema.h"
#include "server/api_request.h"

namespace hearth::server {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxTools = 128;
constexpr size_t kMaxParallelCalls = 8;

[[noreturn]] void invalid(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

const json* present(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

ToolFunction parse_function(const json& f, const std::string& param) {
  if (!f.is_object()) invalid(param, fmt::format("'{}' must be an object", param));
  ToolFunction fn;
  const json* name = present(f, "name");
  if (name == nullptr || !name->is_string() || !valid_name(name->get<std::string>())) {
    invalid(param + ".name", fmt::format("'{}.name' must be 1 to 64 letters, digits, '_' or '-'", param));
  }
  fn.name = name->get<std::string>();
  if (const json* d = present(f, "description")) {
    if (!d->is_string()) invalid(param + ".description", fmt::format("'{}.description' must be a string", param));
    fn.description = d->get<std::string>();
  }
  fn.parameters = {{"type", "object"}};
  if (const json* p = present(f, "parameters")) {
    if (!p->is_object()) invalid(param + ".parameters", fmt::format("'{}.parameters' must be a JSON Schema object", param));
    if (!p->empty()) fn.parameters = *p;
  }
  for (const auto& item : f.items()) {
    if (item.key() != "name" && item.key() != "description" && item.key() != "parameters" && item.key() != "strict") {
      invalid(param + "." + item.key(), fmt::format("unknown field '{}.{}'", param, item.key()));
    }
  }
  return fn;
}

std::string random_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("call_{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

}  // namespace

std::optional<ToolSpec> parse_tools(const json& body) {
  const json* tools = present(body, "tools");
  const json* functions = present(body, "functions");
  const bool has_tools = tools != nullptr && !(tools->is_array() && tools->empty());
  const bool has_functions = functions != nullptr && !(functions->is_array() && functions->empty());
  if (has_tools && has_functions) invalid("functions", "give 'tools' or the legacy 'functions', not both");
  if (!has_tools && !has_functions) {
    if (tools != nullptr && !tools->is_array()) invalid("tools", "'tools' must be an array");
    if (functions != nullptr && !functions->is_array()) invalid("functions", "'functions' must be an array");
    if (present(body, "tool_choice") != nullptr) {
      invalid("tool_choice", "'tool_choice' is only allowed when 'tools' are specified");
    }
    if (present(body, "parallel_tool_calls") != nullptr) {
      invalid("parallel_tool_calls", "'parallel_tool_calls' is only allowed when 'tools' are specified");
    }
    if (present(body, "function_call") != nullptr) {
      invalid("function_call", "'function_call' is only allowed when 'functions' are specified");
    }
    return std::nullopt;
  }
  ToolSpec spec;
  spec.legacy = has_functions;
  const json& list = has_tools ? *tools : *functions;
  const std::string list_name = has_tools ? "tools" : "functions";
  if (!list.is_array()) invalid(list_name, fmt::format("'{}' must be an array", list_name));
  if (list.size() > kMaxTools) invalid(list_name, fmt::format("at most {} {}", kMaxTools, list_name));
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string param = fmt::format("{}[{}]", list_name, i);
    ToolFunction fn;
    if (has_tools) {
      const json& t = list[i];
      if (!t.is_object() || !t.contains("type") || t["type"] != "function") {
        invalid(param + ".type", fmt::format("'{}.type' must be \"function\" (the only tool type offered)", param));
      }
      if (!t.contains("function")) invalid(param + ".function", fmt::format("'{}.function' is required", param));
      fn = parse_function(t["function"], param + ".function");
    } else {
      fn = parse_function(list[i], param);
    }
    if (!names.insert(fn.name).second) invalid(param, fmt::format("the function name '{}' is used twice", fn.name));
    spec.functions.push_back(std::move(fn));
  }
  const char* choice_field = spec.legacy ? "function_call" : "tool_choice";
  if (spec.legacy && present(body, "tool_choice") != nullptr) invalid("tool_choice", "'tool_choice' goes with 'tools', not 'functions'");
  if (const json* choice = present(body, choice_field)) {
    if (choice->is_string()) {
      const std::string c = choice->get<std::string>();
      if (c == "none") {
        spec.choice = ToolSpec::Choice::None;
      } else if (c == "auto") {
        spec.choice = ToolSpec::Choice::Auto;
      } else if (c == "required" && !spec.legacy) {
        spec.choice = ToolSpec::Choice::Required;
      } else {
        invalid(choice_field, fmt::format("'{}' must be \"none\", \"auto\"{} or a named function", choice_field,
                                          spec.legacy ? "" : ", \"required\""));
      }
    } else if (choice->is_object()) {
      const json* name = nullptr;
      if (spec.legacy) {
        name = present(*choice, "name");
      } else {
        if (!choice->contains("type") || (*choice)["type"] != "function") {
          invalid(choice_field, "a named 'tool_choice' is {\"type\": \"function\", \"function\": {\"name\": ...}}");
        }
        if (const json* f = present(*choice, "function"); f != nullptr && f->is_object()) name = present(*f, "name");
      }
      if (name == nullptr || !name->is_string()) invalid(choice_field, fmt::format("'{}' names no function", choice_field));
      spec.named = name->get<std::string>();
      if (!names.contains(spec.named)) {
        invalid(choice_field, fmt::format("'{}' names '{}', which is not among the {}", choice_field, spec.named, list_name));
      }
      spec.choice = ToolSpec::Choice::Named;
    } else {
      invalid(choice_field, fmt::format("'{}' must be a string or an object", choice_field));
    }
  }
  if (const json* p = present(body, "parallel_tool_calls")) {
    if (spec.legacy) invalid("parallel_tool_calls", "'parallel_tool_calls' goes with 'tools', not 'functions'");
    if (!p->is_boolean()) invalid("parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
    spec.parallel = p->get<bool>();
  }
  if (spec.legacy) spec.parallel = false;
  return spec;
}

std::string tools_system_prompt(const ToolSpec& tools) {
  if (tools.choice == ToolSpec::Choice::None) return {};
  json list = json::array();
  for (const ToolFunction& f : tools.functions) {
    json entry = {{"name", f.name}, {"parameters", f.parameters}};
    if (!f.description.empty()) entry["description"] = f.description;
    list.push_back(entry);
  }
  std::string when;
  switch (tools.choice) {
    case ToolSpec::Choice::Auto:
      when = "If a tool helps to answer, call it; otherwise answer the user normally.";
      break;
    case ToolSpec::Choice::Required:
      when = "You must call at least one tool now.";
      break;
    case ToolSpec::Choice::Named:
      when = fmt::format("You must call the tool '{}' now.", tools.named);
      break;
    case ToolSpec::Choice::None:
      break;
  }
  return fmt::format(
      "You can call tools (functions). Each is listed with a JSON Schema of its arguments:\n{}\n"
      "To call tools, answer with only this JSON and nothing else: "
      "{{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{<arguments>}}}}]}}{}\n{}",
      list.dump(), tools.parallel ? " (one entry per call)" : " (exactly one call)", when);
}

std::string tool_call_grammar(const ToolSpec& tools) {
  if (tools.choice != ToolSpec::Choice::Required && tools.choice != ToolSpec::Choice::Named) return {};
  json branches = json::array();
  for (const ToolFunction& f : tools.functions) {
    if (tools.choice == ToolSpec::Choice::Named && f.name != tools.named) continue;
    branches.push_back({{"type", "object"},
                        {"properties", {{"name", {{"const", f.name}}}, {"arguments", f.parameters}}},
                        {"required", {"name", "arguments"}}});
  }
  const json schema = {
      {"type", "object"},
      {"properties",
       {{"tool_calls",
         {{"type", "array"}, {"minItems", 1}, {"maxItems", tools.parallel ? kMaxParallelCalls : 1}, {"items", {{"anyOf", branches}}}}}}},
      {"required", {"tool_calls"}}};
  try {
    return engine::grammar::json_schema_to_gbnf(schema);
  } catch (const engine::grammar::SchemaError& e) {
    throw ApiError(400, fmt::format("a tool's parameters: {}", e.what()), "invalid_request_error", "tools",
                   "unsupported_schema");
  }
}

std::optional<json> parse_tool_calls(const std::string& answer, const ToolSpec& tools) {
  if (tools.choice == ToolSpec::Choice::None) return std::nullopt;
  // The JSON may sit in a code fence (small models like them).
  std::string text = answer;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return std::nullopt;
  text.erase(0, first);
  if (text.rfind("```", 0) == 0) {
    const size_t open = text.find('\n');
    const size_t close = text.rfind("```");
    if (open == std::string::npos || close <= open) return std::nullopt;
    text = text.substr(open + 1, close - open - 1);
  }
  json parsed = json::parse(text, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("tool_calls")) return std::nullopt;
  const json& calls = parsed["tool_calls"];
  if (!calls.is_array() || calls.empty()) return std::nullopt;
  if (!tools.parallel && calls.size() > 1) return std::nullopt;
  json out = json::array();
  for (const json& call : calls) {
    if (!call.is_object() || !call.contains("name") || !call["name"].is_string()) return std::nullopt;
    const std::string name = call["name"].get<std::string>();
    bool known = false;
    for (const ToolFunction& f : tools.functions) known = known || f.name == name;
    if (!known || (tools.choice == ToolSpec::Choice::Named && name != tools.named)) return std::nullopt;
    const json arguments = call.contains("arguments") ? call["arguments"] : json::object();
    if (!arguments.is_object()) return std::nullopt;
    out.push_back({{"id", random_call_id()},
                   {"type", "function"},
                   {"function", {{"name", name}, {"arguments", arguments.dump()}}}});
  }
  return out;
}

std::string tool_calls_as_text(const json& tool_calls, const std::string& param) {
  if (!tool_calls.is_array()) invalid(param, fmt::format("'{}' must be an array", param));
  json calls = json::array();
  for (size_t i = 0; i < tool_calls.size(); ++i) {
    const json& c = tool_calls[i];
    const std::string p = fmt::format("{}[{}]", param, i);
    const json* f = c.is_object() ? present(c, "function") : nullptr;
    if (f == nullptr || !f->is_object() || !f->contains("name") || !(*f)["name"].is_string()) {
      invalid(p, fmt::format("'{}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}", p));
    }
    json arguments = json::object();
    if (const json* a = present(*f, "arguments")) {
      if (!a->is_string()) invalid(p + ".function.arguments", "tool call arguments must be a JSON string");
      arguments = json::parse(a->get<std::string>(), nullptr, false);
      if (arguments.is_discarded()) invalid(p + ".function.arguments", "tool call arguments must be valid JSON");
    }
    calls.push_back({{"name", (*f)["name"]}, {"arguments", arguments}});
  }
  return json{{"tool_calls", calls}}.dump();
}

}  // namespace hearth::server
