#include "server/tool_calls.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <set>

#include "engine/grammar/json_schema.h"
#include "server/api_request.h"

namespace hearth::server {
namespace {

using json = nlohmann::ordered_json;

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

std::string random_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("call_{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

}  // namespace

ToolFunction parse_tool_function(const json& f, const std::string& param, std::initializer_list<std::string_view> extra) {
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
    const std::string_view key = item.key();
    if (std::find(extra.begin(), extra.end(), key) != extra.end()) continue;
    if (key != "name" && key != "description" && key != "parameters" && key != "strict") {
      invalid(param + "." + item.key(), fmt::format("unknown field '{}.{}'", param, item.key()));
    }
  }
  return fn;
}


std::optional<ToolSpec> parse_tools(const json& body, ToolFormat format) {
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
  spec.format = format;
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
      fn = parse_tool_function(t["function"], param + ".function");
    } else {
      fn = parse_tool_function(list[i], param);
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

std::string_view tool_format_name(ToolFormat format) {
  switch (format) {
    case ToolFormat::Generic: return "generic";
    case ToolFormat::Hermes: return "hermes";
    case ToolFormat::Llama3: return "llama3";
  }
  return "generic";
}

std::optional<ToolFormat> tool_format_from_name(std::string_view name) {
  for (ToolFormat f : {ToolFormat::Generic, ToolFormat::Hermes, ToolFormat::Llama3}) {
    if (tool_format_name(f) == name) return f;
  }
  return std::nullopt;
}

ToolFormat detect_tool_format(std::string_view t) {
  if (t.find("<tool_call>") != std::string_view::npos) return ToolFormat::Hermes;
  if (t.find("Environment: ipython") != std::string_view::npos || t.find("<|python_tag|>") != std::string_view::npos) {
    return ToolFormat::Llama3;
  }
  return ToolFormat::Generic;
}

namespace {

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";

std::string choice_sentence(const ToolSpec& tools) {
  switch (tools.choice) {
    case ToolSpec::Choice::Auto: return "If a tool helps to answer, call it; otherwise answer the user normally.";
    case ToolSpec::Choice::Required: return "You must call at least one tool now.";
    case ToolSpec::Choice::Named: return fmt::format("You must call the tool '{}' now.", tools.named);
    case ToolSpec::Choice::None: break;
  }
  return {};
}

// JSON as the models' Jinja templates write it (Python's json.dumps / tojson): ", " between
// items and ": " after keys, keys in the order given, non-ASCII text as is.
std::string python_json(const json& v) {
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [key, value] : v.items()) {
      out += (first ? "" : ", ") + json(key).dump() + ": " + python_json(value);
      first = false;
    }
    return out + "}";
  }
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + python_json(v[i]);
    return out + "]";
  }
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The functions as OpenAI's tool objects ({"type": "function", "function": {...}}).
json openai_tool(const ToolFunction& f) {
  json fn = {{"name", f.name}};
  if (!f.description.empty()) fn["description"] = f.description;
  fn["parameters"] = f.parameters;
  return {{"type", "function"}, {"function", fn}};
}

// One call's grammar rules: `toolcall` is one call object of an allowed function, with its
// arguments under `arguments_key`. The schema compiler's root is renamed.
std::string call_rules(const ToolSpec& tools, const char* arguments_key) {
  json branches = json::array();
  for (const ToolFunction& f : tools.functions) {
    if (tools.choice == ToolSpec::Choice::Named && f.name != tools.named) continue;
    branches.push_back({{"type", "object"},
                        {"properties", {{"name", {{"const", f.name}}}, {arguments_key, f.parameters}}},
                        {"required", {"name", arguments_key}}});
  }
  std::string gbnf;
  try {
    gbnf = engine::grammar::json_schema_to_gbnf(json{{"anyOf", branches}});
  } catch (const engine::grammar::SchemaError& e) {
    throw ApiError(400, fmt::format("a tool's parameters: {}", e.what()), "invalid_request_error", "tools",
                   "unsupported_schema");
  }
  // The compiler writes `root ::= …` first; references to `root` elsewhere (a recursive "$ref":
  // "#") mean the call, as they did.
  HEARTH_CHECK(gbnf.starts_with("root ::= "), "unexpected grammar from the schema compiler");
  std::string out;
  size_t at = 0;
  while (at < gbnf.size()) {
    size_t end = gbnf.find('\n', at);
    if (end == std::string::npos) end = gbnf.size();
    std::string line = gbnf.substr(at, end - at);
    for (size_t p = line.find("root"); p != std::string::npos; p = line.find("root", p + 8)) {
      const bool left = p == 0 || !(std::isalnum(static_cast<unsigned char>(line[p - 1])) || line[p - 1] == '-' || line[p - 1] == '_');
      const bool right = p + 4 >= line.size() || !(std::isalnum(static_cast<unsigned char>(line[p + 4])) || line[p + 4] == '-' || line[p + 4] == '_');
      const bool quoted = std::count(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(p), '"') % 2 == 1;
      if (left && right && !quoted) line.replace(p, 4, "toolcall");
    }
    out += line + "\n";
    at = end + 1;
  }
  return out;
}

bool known_call(const ToolSpec& tools, const std::string& name) {
  if (tools.choice == ToolSpec::Choice::Named && name != tools.named) return false;
  return std::any_of(tools.functions.begin(), tools.functions.end(), [&](const ToolFunction& f) { return f.name == name; });
}

// One call object of the format ({"name", arguments_key: {...}}) as OpenAI's tool call, or
// nullopt when it is not a call of an allowed function.
std::optional<json> openai_call(const json& call, const ToolSpec& tools, const char* arguments_key) {
  if (!call.is_object() || !call.contains("name") || !call["name"].is_string()) return std::nullopt;
  const std::string name = call["name"].get<std::string>();
  if (!known_call(tools, name)) return std::nullopt;
  json arguments = call.contains(arguments_key) ? call[arguments_key] : json::object();
  if (arguments.is_string()) arguments = json::parse(arguments.get<std::string>(), nullptr, false);  // some models quote them
  if (!arguments.is_object()) return std::nullopt;
  return json{{"id", random_call_id()}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments.dump()}}}};
}

std::string trim(std::string_view s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string_view::npos) return {};
  const size_t b = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(a, b - a + 1));
}

// The whole answer as one JSON value (generic and llama3 formats): the JSON may sit in a code
// fence (small models like them).
json whole_answer_json(const std::string& answer) {
  std::string text = trim(answer);
  if (text.rfind("```", 0) == 0) {
    const size_t open = text.find('\n');
    const size_t close = text.rfind("```");
    if (open == std::string::npos || close <= open) return json(json::value_t::discarded);
    text = text.substr(open + 1, close - open - 1);
  }
  return json::parse(text, nullptr, false);
}

ParsedAnswer parse_generic(const std::string& answer, const ToolSpec& tools) {
  const json parsed = whole_answer_json(answer);
  if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("tool_calls")) return {answer, std::nullopt};
  const json& calls = parsed["tool_calls"];
  if (!calls.is_array() || calls.empty() || (!tools.parallel && calls.size() > 1)) return {answer, std::nullopt};
  json out = json::array();
  for (const json& call : calls) {
    std::optional<json> c = openai_call(call, tools, "arguments");
    if (!c) return {answer, std::nullopt};
    out.push_back(std::move(*c));
  }
  return {"", std::move(out)};
}

ParsedAnswer parse_llama3(const std::string& answer, const ToolSpec& tools) {
  std::string text = answer;
  if (const size_t tag = text.find("<|python_tag|>"); tag != std::string::npos) text = text.substr(tag + 14);
  const json parsed = whole_answer_json(text);
  if (parsed.is_discarded()) return {answer, std::nullopt};
  // One call ({"name", "parameters"}), or a list of them where parallel calls are allowed.
  const json list = parsed.is_array() ? parsed : json::array({parsed});
  if (list.empty() || (!tools.parallel && list.size() > 1)) return {answer, std::nullopt};
  json out = json::array();
  for (const json& call : list) {
    std::optional<json> c = openai_call(call, tools, call.is_object() && call.contains("arguments") ? "arguments" : "parameters");
    if (!c) return {answer, std::nullopt};
    out.push_back(std::move(*c));
  }
  return {"", std::move(out)};
}

ParsedAnswer parse_hermes(const std::string& answer, const ToolSpec& tools) {
  const size_t first = answer.find(kHermesOpen);
  if (first == std::string::npos) return {answer, std::nullopt};
  json out = json::array();
  std::string content = answer.substr(0, first);
  size_t at = first;
  while (at != std::string::npos) {
    const size_t body = at + kHermesOpen.size();
    size_t close = answer.find(kHermesClose, body);
    // A last call cut short of its closing tag (the answer ended at max_tokens or a stop) still
    // counts when its JSON is whole; when it is not, it is dropped and the calls before it stand.
    const std::string inside = answer.substr(body, close == std::string::npos ? std::string::npos : close - body);
    const json parsed = json::parse(trim(inside), nullptr, false);
    std::optional<json> call = parsed.is_discarded() ? std::nullopt : openai_call(parsed, tools, "arguments");
    if (!call && close == std::string::npos && !out.empty() && parsed.is_discarded()) break;  // a last call cut short: dropped
    if (!call) return {answer, std::nullopt};
    out.push_back(std::move(*call));
    if (close == std::string::npos) break;
    const size_t next = answer.find(kHermesOpen, close + kHermesClose.size());
    const std::string between = answer.substr(close + kHermesClose.size(),
                                              next == std::string::npos ? std::string::npos : next - close - kHermesClose.size());
    if (!trim(between).empty()) content += between;
    at = next;
  }
  if (!tools.parallel && out.size() > 1) return {answer, std::nullopt};
  if (trim(content).empty()) content.clear();
  return {content, std::move(out)};
}

}  // namespace

std::string tools_prompt(const ToolSpec& tools) {
  if (tools.choice == ToolSpec::Choice::None) return {};
  switch (tools.format) {
    case ToolFormat::Generic: {
      json list = json::array();
      for (const ToolFunction& f : tools.functions) {
        json entry = {{"name", f.name}, {"parameters", f.parameters}};
        if (!f.description.empty()) entry["description"] = f.description;
        list.push_back(entry);
      }
      return fmt::format(
          "You can call tools (functions). Each is listed with a JSON Schema of its arguments:\n{}\n"
          "To call tools, answer with only this JSON and nothing else: "
          "{{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{<arguments>}}}}]}}{}\n{}",
          list.dump(), tools.parallel ? " (one entry per call)" : " (exactly one call)", choice_sentence(tools));
    }
    case ToolFormat::Hermes: {
      std::string lines;
      for (const ToolFunction& f : tools.functions) lines += "\n" + python_json(openai_tool(f));
      return fmt::format(
          "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
          "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{}\n</tools>\n\n"
          "For each function call, return a json object with function name and arguments within "
          "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
          "<args-json-object>}}\n</tool_call>{}",
          lines, tools.choice == ToolSpec::Choice::Auto ? "" : "\n\n" + choice_sentence(tools));
    }
    case ToolFormat::Llama3: {
      std::string listed;
      for (const ToolFunction& f : tools.functions) listed += openai_tool(f).dump(4) + "\n\n";
      return fmt::format(
          "Given the following functions, please respond with a JSON for a function call with its proper arguments "
          "that best answers the given prompt.\n\nRespond in the format {{\"name\": function name, \"parameters\": "
          "dictionary of argument name and its value}}.Do not use variables.\n\n{}{}",
          listed, tools.choice == ToolSpec::Choice::Auto ? "" : choice_sentence(tools) + "\n\n");
    }
  }
  return {};
}

std::string tool_call_grammar(const ToolSpec& tools) {
  if (tools.choice != ToolSpec::Choice::Required && tools.choice != ToolSpec::Choice::Named) return {};
  const size_t more = tools.parallel ? kMaxParallelCalls - 1 : 0;
  switch (tools.format) {
    case ToolFormat::Generic:
      return call_rules(tools, "arguments") +
             fmt::format("root ::= \"{{\" ws \"\\\"tool_calls\\\"\" ws \":\" ws \"[\" ws toolcall (ws \",\" ws toolcall){{0,{}}} ws \"]\" ws \"}}\"\n",
                         more);  // ws: the schema compiler's
    case ToolFormat::Hermes:
      return call_rules(tools, "arguments") +
             fmt::format("root ::= \"<tool_call>\\n\" toolcall \"\\n</tool_call>\" (\"\\n<tool_call>\\n\" toolcall \"\\n</tool_call>\"){{0,{}}}\n", more);
    case ToolFormat::Llama3:
      return call_rules(tools, "parameters") + "root ::= toolcall\n";
  }
  return {};
}

ParsedAnswer parse_tool_calls(const std::string& answer, const ToolSpec& tools) {
  if (tools.choice == ToolSpec::Choice::None) return {answer, std::nullopt};
  switch (tools.format) {
    case ToolFormat::Generic: return parse_generic(answer, tools);
    case ToolFormat::Hermes: return parse_hermes(answer, tools);
    case ToolFormat::Llama3: return parse_llama3(answer, tools);
  }
  return {answer, std::nullopt};
}

std::string ToolCallStream::feed(const std::string& text) {
  answer_ += text;
  if (tools_.choice == ToolSpec::Choice::None) {
    sent_ = answer_.size();
    return text;
  }
  if (tools_.format == ToolFormat::Hermes) {
    // Content until a call opens; a tail that may be the start of "<tool_call>" waits.
    if (answer_.find(kHermesOpen) != std::string::npos) {
      const size_t open = answer_.find(kHermesOpen);
      std::string out = open > sent_ ? answer_.substr(sent_, open - sent_) : std::string();
      sent_ = std::max(sent_, open);
      return out;
    }
    size_t keep = 0;
    for (size_t k = std::min(answer_.size() - sent_, kHermesOpen.size() - 1); k > 0; --k) {
      if (kHermesOpen.starts_with(std::string_view(answer_).substr(answer_.size() - k))) {
        keep = k;
        break;
      }
    }
    std::string out = answer_.substr(sent_, answer_.size() - keep - sent_);
    sent_ = answer_.size() - keep;
    return out;
  }
  // Generic and Llama 3: a call is the whole answer, a JSON value (perhaps in a code fence, or
  // after Llama's <|python_tag|>). An answer that starts otherwise is content from the start.
  if (!passing_) {
    const size_t first = answer_.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return {};
    const char c = answer_[first];
    if (c == '{' || c == '[' || c == '`' || c == '<') return {};
    passing_ = true;
  }
  std::string out = answer_.substr(sent_);
  sent_ = answer_.size();
  return out;
}

ParsedAnswer ToolCallStream::finish(const std::string& tail) {
  answer_ += tail;
  ParsedAnswer parsed = passing_ ? ParsedAnswer{answer_, std::nullopt} : parse_tool_calls(answer_, tools_);
  // What was sent is a prefix of the content (it was content for certain); the rest goes now.
  if (parsed.calls) {
    parsed.content = parsed.content.size() > sent_ ? parsed.content.substr(sent_) : std::string();
  } else {
    parsed.content = answer_.substr(sent_);
  }
  sent_ = answer_.size();
  return parsed;
}

std::string tool_calls_as_text(const json& tool_calls, const std::string& param, ToolFormat format) {
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
  switch (format) {
    case ToolFormat::Generic: return json{{"tool_calls", calls}}.dump();
    case ToolFormat::Hermes: {
      std::string out;
      for (const json& c : calls) out += (out.empty() ? "" : "\n") + fmt::format("<tool_call>\n{}\n</tool_call>", python_json(c));
      return out;
    }
    case ToolFormat::Llama3: {
      if (calls.size() == 1) return python_json({{"name", calls[0]["name"]}, {"parameters", calls[0]["arguments"]}});
      json list = json::array();
      for (const json& c : calls) list.push_back({{"name", c["name"]}, {"parameters", c["arguments"]}});
      return python_json(list);
    }
  }
  return {};
}

ToolResultTurn tool_result_turn(const std::string& call_id, const std::string& name, const std::string& result,
                                ToolFormat format) {
  switch (format) {
    case ToolFormat::Generic:
      return {"user", fmt::format("Tool result ({}{}{}): {}", call_id.empty() ? "" : "call " + call_id,
                                  !call_id.empty() && !name.empty() ? ", " : "", name, result)};
    case ToolFormat::Hermes: return {"user", fmt::format("<tool_response>\n{}\n</tool_response>", result)};
    case ToolFormat::Llama3: return {"ipython", result};
  }
  return {"user", result};
}

}  // namespace hearth::server
