// The OpenAI request bodies of /v1/chat/completions and /v1/completions, parsed and checked:
// every field's type and range, with an ApiError naming the field (OpenAI's `param`) for
// anything wrong. Every top-level field is honoured, accepted without effect on the output, or
// refused with a 400 naming it; unknown fields are refused too (docs/API.md has the table).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/text/chat_template.h"
#include "engine/batch/sampler.h"
#include "engine/text/tokenizer.h"
#include "server/tool_calls.h"

namespace hearth::server {

// An error as OpenAI reports it: HTTP status + {"error": {message, type, param, code}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status_, const std::string& message, std::string type_ = "invalid_request_error",
           std::string param_ = "", std::string code_ = "")
      : std::runtime_error(message), status(status_), type(std::move(type_)), param(std::move(param_)),
        code(std::move(code_)) {}
  int status;
  std::string type;
  std::string param;  // empty: null
  std::string code;   // empty: null
};

nlohmann::ordered_json error_body(const std::string& message, const std::string& type, const std::string& param,
                          const std::string& code);

struct CompletionRequest {
  bool chat = true;
  std::string model;
  std::vector<engine::ChatMessage> messages;          // chat
  std::optional<std::string> prompt_text;             // completions: a text prompt
  std::optional<std::vector<engine::Token>> prompt_tokens;  // completions: token ids
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  int32_t max_tokens = -1;      // -1: until end of generation or the context is full
  engine::SamplingParams sampling;
  bool seed_given = false;
  std::vector<std::string> stop;
  int32_t n = 1;
  bool logprobs = false;
  int32_t top_logprobs = 0;     // alternatives per token (chat: top_logprobs; completions: logprobs)
  bool ignore_eos = false;      // extension (llama.cpp's name): generate exactly max_tokens
  // GBNF that constrains the output (from `grammar`, `json_schema` or `response_format`
  // json_object / json_schema; already checked to parse), empty: unconstrained.
  std::string grammar;
  // Chat: the tools (tool_calls.h), when the request has any; their description is already in
  // `messages`, and for tool_choice required / named their grammar is `grammar`.
  std::optional<ToolSpec> tools;
};

// Throws ApiError(400) for a body that is not an object, a missing messages/prompt, a wrong type
// or an out-of-range value (the field is named in `param`), a feature not offered (echo, tools,
// tool_choice, functions, suffix, best_of > n, ...), a grammar that does not parse, a schema
// with an unsupported keyword (named), more than one of grammar / json_schema / response_format,
// or a field the endpoint does not know. logit_bias token ids are not checked
// against the vocabulary here (the caller knows it).
CompletionRequest parse_completion_request(const nlohmann::ordered_json& body, bool chat,
                                           ToolFormat tool_format = ToolFormat::Generic);

// The request's GBNF constraint from `grammar`, `json_schema` or `response_format` (empty:
// none); 400 naming the field for a bad one or more than one.
std::string parse_constraint(const nlohmann::ordered_json& body);
// Adds the tools' description to the conversation where the format puts it (tool_calls.h).
void add_tools_prompt(std::vector<engine::ChatMessage>& messages, const ToolSpec& tools);

}  // namespace hearth::server
