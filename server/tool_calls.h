// Tool calls (OpenAI's `tools` / `tool_choice` / `parallel_tool_calls`, the legacy `functions` /
// `function_call` mapped onto them, and the tools of /v1/responses and /v1/messages), in the
// format the model was trained on where its chat template shows one, else in a generic JSON
// convention that works with any template:
//
//   generic  a system message lists the tools; the model calls them by answering with exactly
//            {"tool_calls": [{"name": "NAME", "arguments": {...}}, ...]}
//   hermes   (Qwen 2.5 / Qwen 3, Hermes, and every template that has `<tool_call>`) the tools in
//            the system message inside <tools></tools>, one JSON object per line; each call is
//            <tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>, possibly after some
//            text; results go back in a user turn as <tool_response>\n…\n</tool_response>
//   llama3   (Llama 3.1 / 3.2 JSON tool calling) "Environment: ipython" in the system message, the
//            tools and the calling instructions in the first user message; a call is the whole
//            answer {"name": NAME, "parameters": {...}} (one per answer); results go back in
//            `ipython` turns
//
// With `tool_choice` `required` or a named function the answer is constrained by a grammar
// (compiled from the tools' parameter schemas) in the format, so the call always parses; with
// `auto` the answer is parsed after the fact. Earlier turns (an assistant's calls, a tool's
// result) are written back in the same format.
#pragma once

#include <nlohmann/json.hpp>

#include <initializer_list>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

namespace hearth::server {

struct ToolFunction {
  std::string name;
  std::string description;
  nlohmann::ordered_json parameters;  // a JSON Schema (an object); {"type": "object"} when absent
};

enum class ToolFormat { Generic, Hermes, Llama3 };

// "generic", "hermes", "llama3".
std::string_view tool_format_name(ToolFormat format);
std::optional<ToolFormat> tool_format_from_name(std::string_view name);
// The format a model's Jinja chat template shows (its tool sections), Generic when none.
ToolFormat detect_tool_format(std::string_view jinja_template);

struct ToolSpec {
  enum class Choice { None, Auto, Required, Named };
  std::vector<ToolFunction> functions;
  Choice choice = Choice::Auto;
  std::string named;     // Choice::Named: the function
  bool parallel = true;  // parallel_tool_calls: more than one call in an answer
  bool legacy = false;   // from `functions`: answered as `function_call` (one call)
  ToolFormat format = ToolFormat::Generic;
};

// The tools of a chat completions request, or nullopt when it has none (`tools` absent, null
// or []). Throws ApiError (400) naming the field for anything malformed: a tool that is not a
// function, a missing or repeated name, `tool_choice` / `parallel_tool_calls` / `function_call`
// without tools, a named choice that is not a tool, both `tools` and `functions`.
std::optional<ToolSpec> parse_tools(const nlohmann::ordered_json& body, ToolFormat format);
// A function's fields (name, description, parameters, strict), as in a chat tool's `function`
// or a Responses API tool; `extra` names fields of the container to skip.
ToolFunction parse_tool_function(const nlohmann::ordered_json& f, const std::string& param,
                                 std::initializer_list<std::string_view> extra = {});

// The text that describes the tools to the model, in the format: the generic and Hermes
// formats add it to the system message, Llama 3 to the first user message (empty for
// Choice::None).
std::string tools_prompt(const ToolSpec& tools);

// GBNF for an answer that is one call (or several, when parallel and the format has them) of
// the allowed functions: for Choice::Required and Choice::Named; empty otherwise. Throws
// ApiError (400, param "tools") when a parameter schema uses a keyword the schema compiler does
// not support.
std::string tool_call_grammar(const ToolSpec& tools);

// A model's answer split into content and calls. `calls` holds OpenAI's `tool_calls` array
// ({"id", "type": "function", "function": {"name", "arguments" (a JSON string)}}) with fresh
// ids "call_…", or nullopt when the answer holds no call in the format (then all of it is
// content). Hermes answers may have content beside their calls; the other formats none.
struct ParsedAnswer {
  std::string content;
  std::optional<nlohmann::ordered_json> calls;
};
ParsedAnswer parse_tool_calls(const std::string& answer, const ToolSpec& tools);

// A streamed answer with tools: feed() returns the text that is certainly content and may be
// sent now; what could still turn out to be a call is held until finish(), which parses the
// whole answer and returns the content not sent yet and the calls.
class ToolCallStream {
 public:
  explicit ToolCallStream(const ToolSpec& tools) : tools_(tools) {}
  std::string feed(const std::string& text);
  ParsedAnswer finish(const std::string& tail);

 private:
  const ToolSpec& tools_;
  std::string answer_;
  size_t sent_ = 0;       // bytes of answer_ already returned as content
  bool passing_ = false;  // generic / llama3: the answer did not start like a call
};

// The turns of tool calling written back for the template, in the format.
// An assistant message's `tool_calls` (OpenAI form) as text. Throws ApiError naming `param`
// when malformed.
std::string tool_calls_as_text(const nlohmann::ordered_json& tool_calls, const std::string& param, ToolFormat format);
// A tool's result as a message (role and content) for the template; `name` may be empty.
struct ToolResultTurn {
  std::string role;
  std::string content;
};
ToolResultTurn tool_result_turn(const std::string& call_id, const std::string& name, const std::string& result,
                                ToolFormat format);

}  // namespace hearth::server
