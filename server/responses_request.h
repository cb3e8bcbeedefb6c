// The request bodies of OpenAI's Responses API (/v1/responses) and Anthropic's Messages API
// (/v1/messages), checked field by field (a 400 names the field, as the API names it) and
// translated into the chat form the engine runs: a CompletionRequest over ChatMessages, with
// tools in the model's format (tool_calls.h). docs/API.md has the table of every field.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "server/api_request.h"
#include "server/tool_calls.h"

namespace hearth::server {

struct ResponsesRequest {
  CompletionRequest chat;           // what runs (chat = true, n = 1)
  nlohmann::ordered_json conversation;      // the turns in chat-completions form, without instructions:
                                    // the previous response's, then this input (kept for the next turn)
  std::optional<std::string> instructions;
  std::optional<std::string> previous_response_id;
  std::optional<int32_t> max_output_tokens;
  bool store = true;
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  nlohmann::ordered_json text_format = {{"type", "text"}};  // echoed in the response's "text"
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();   // echoed as given
  nlohmann::ordered_json tool_choice = "auto";              // echoed as given
  bool parallel_tool_calls = true;
  std::optional<std::string> user;
};

// `previous` is the stored conversation of previous_response_id (chat-completions form), or
// nullptr when the request names none; the caller looks it up (and answers a 404-like 400 for
// an unknown id) after reading `previous_response_id(body)`.
std::optional<std::string> previous_response_id(const nlohmann::ordered_json& body);
ResponsesRequest parse_responses_request(const nlohmann::ordered_json& body, ToolFormat format,
                                         const nlohmann::ordered_json* previous);

struct MessagesRequest {
  CompletionRequest chat;  // what runs
  std::vector<std::string> stop_sequences;
};
// Anthropic's Messages API body. Errors are ApiError (400) naming the field.
MessagesRequest parse_messages_request(const nlohmann::ordered_json& body, ToolFormat format);

}  // namespace hearth::server
