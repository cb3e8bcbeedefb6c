// Tool calls (OpenAI's `tools` / `tool_choice` / `parallel_tool_calls`, and the legacy
// `functions` / `function_call` mapped onto them) by one generic convention that works with any
// chat template: the tools are described to the model in a system message, and the model calls
// them by answering with exactly
//
//   {"tool_calls": [{"name": "NAME", "arguments": {...}}, ...]}
//
// With `tool_choice` `required` or a named function the answer is constrained by a grammar
// (compiled from the tools' parameter schemas), so the call always parses; with `auto` the
// answer is parsed after the fact and is a tool call only when it has exactly that form.
// Earlier turns are written back in the same convention: an assistant message's `tool_calls` as
// that JSON, a `tool` message as a user message carrying the call id, name and result.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace hearth::server {

struct ToolFunction {
  std::string name;
  std::string description;
  nlohmann::json parameters;  // a JSON Schema (an object); {"type": "object"} when absent
};

struct ToolSpec {
  enum class Choice { None, Auto, Required, Named };
  std::vector<ToolFunction> functions;
  Choice choice = Choice::Auto;
  std::string named;     // Choice::Named: the function
  bool parallel = true;  // parallel_tool_calls: more than one call in an answer
  bool legacy = false;   // from `functions`: answered as `function_call` (one call)
};

// The tools of a request, or nullopt when it has none (`tools` absent, null or []). Throws
// ApiError (400) naming the field for anything malformed: a tool that is not a function, a
// missing or repeated name, `tool_choice` / `parallel_tool_calls` / `function_call` without
// tools, a named choice that is not a tool, both `tools` and `functions`.
std::optional<ToolSpec> parse_tools(const nlohmann::json& body);

// The system message that describes the tools and the convention (empty for Choice::None).
std::string tools_system_prompt(const ToolSpec& tools);

// GBNF for an answer that is one call (or several, when parallel) of the allowed functions:
// for Choice::Required and Choice::Named; empty otherwise. Throws ApiError (400, param "tools")
// when a parameter schema uses a keyword the schema compiler does not support.
std::string tool_call_grammar(const ToolSpec& tools);

// The calls in a model's answer as OpenAI's `tool_calls` array ({"id", "type": "function",
// "function": {"name", "arguments" (a JSON string)}}), or nullopt when the answer is not a
// call in the convention (then it is ordinary content). Ids are fresh random "call_…".
std::optional<nlohmann::json> parse_tool_calls(const std::string& answer, const ToolSpec& tools);

// An assistant message's `tool_calls` (OpenAI form) as the convention's JSON text, for the
// template. Throws ApiError naming `param` when malformed.
std::string tool_calls_as_text(const nlohmann::json& tool_calls, const std::string& param);

}  // namespace hearth::server
