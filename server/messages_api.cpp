// /v1/messages: Anthropic's Messages API (what Claude-style agent tools speak), whole or
// streamed with its events (message_start, content_block_start / _delta / _stop, message_delta,
// message_stop). Tools are client tools: tool_use blocks out, tool_result blocks back in.
// Errors have Anthropic's shape: {"type": "error", "error": {"type", "message"}}.
#include <fmt/format.h>

#include "server/responses_request.h"
#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

namespace {

// Anthropic's error types by HTTP status.
std::string anthropic_error_type(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    default: return "api_error";
  }
}

json anthropic_error(int status, const std::string& message) {
  return {{"type", "error"}, {"error", {{"type", anthropic_error_type(status)}, {"message", message}}}};
}

// An OpenAI-shaped error already in `res` (from the shared steps) rewritten in Anthropic's shape.
void to_anthropic_error(httplib::Response& res) {
  const json body = json::parse(res.body, nullptr, false);
  std::string message = res.body;
  if (body.is_object() && body.contains("error") && body["error"].contains("message")) {
    message = body["error"]["message"].get<std::string>();
    if (body["error"].contains("param") && body["error"]["param"].is_string()) {
      message += fmt::format(" (field: {})", body["error"]["param"].get<std::string>());
    }
  }
  res.set_content(dump(anthropic_error(res.status, message)), "application/json");
}

std::string stop_reason(const engine::SequenceResult& result, bool calls) {
  if (calls) return "tool_use";
  if (result.finish_reason == "length") return "max_tokens";
  if (!result.stop_string.empty()) return "stop_sequence";
  return "end_turn";
}

json tool_use_block(const json& call) {
  return {{"type", "tool_use"},
          {"id", "toolu_" + call["id"].get<std::string>().substr(5)},
          {"name", call["function"]["name"]},
          {"input", json::parse(call["function"]["arguments"].get<std::string>())}};
}

}  // namespace

void OpenAiServer::Impl::messages(const httplib::Request& req, httplib::Response& res) {
  engine::Model* m = accepting(res);
  if (m == nullptr) {
    to_anthropic_error(res);
    return;
  }
  const std::optional<json> body = parse_body(req, res);
  if (!body) {
    to_anthropic_error(res);
    return;
  }
  MessagesRequest r;
  std::shared_ptr<Exchange> exchange;
  try {
    r = parse_messages_request(*body, tool_format);
    exchange = start(*m, r.chat, prompt_tokens(*m, r.chat), "messages", res);
  } catch (const ApiError& e) {
    std::string message = e.what();
    if (!e.param.empty()) message += fmt::format(" (field: {})", e.param);
    res.status = e.status;
    res.set_content(dump(anthropic_error(e.status, message)), "application/json");
    return;
  }
  if (!exchange) {
    to_anthropic_error(res);
    return;
  }
  const bool tools_active = r.chat.tools && r.chat.tools->choice != ToolSpec::Choice::None;
  const std::string id = random_id("msg_");
  json message = {{"id", id},
                  {"type", "message"},
                  {"role", "assistant"},
                  {"model", options.model_id},
                  {"content", json::array()},
                  {"stop_reason", nullptr},
                  {"stop_sequence", nullptr},
                  {"usage", {{"input_tokens", exchange->n_prompt}, {"output_tokens", 0}, {"cache_read_input_tokens", 0},
                             {"cache_creation_input_tokens", 0}}}};

  if (!r.chat.stream) {
    std::optional<std::vector<ChoiceResult>> results = collect(*exchange, res);
    if (!results) {
      to_anthropic_error(res);
      return;
    }
    const ChoiceResult& c = results->front();
    ParsedAnswer answer = tools_active ? parse_tool_calls(c.text, *r.chat.tools) : ParsedAnswer{c.text, std::nullopt};
    if (!answer.content.empty() || !answer.calls) message["content"].push_back({{"type", "text"}, {"text", answer.content}});
    if (answer.calls) {
      for (const json& call : *answer.calls) message["content"].push_back(tool_use_block(call));
    }
    message["stop_reason"] = stop_reason(c.result, answer.calls.has_value());
    if (!c.result.stop_string.empty()) message["stop_sequence"] = c.result.stop_string;
    message["usage"]["input_tokens"] = exchange->n_prompt - c.result.cached_tokens;
    message["usage"]["cache_read_input_tokens"] = c.result.cached_tokens;
    message["usage"]["output_tokens"] = c.result.completion_tokens;
    res.set_content(dump(message), "application/json");
    return;
  }

  stream_events(res, exchange, [=, this](httplib::DataSink& sink) {
    auto event = [](const std::string& type, json data) {
      data["type"] = type;
      return sse(data, type);
    };
    auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    if (!write(event("message_start", {{"message", message}})) || !write(event("ping", json::object()))) {
      exchange->cancel();
      return false;
    }
    std::unique_ptr<ToolCallStream> calls;
    if (tools_active) calls = std::make_unique<ToolCallStream>(*r.chat.tools);
    bool text_open = false;
    auto text_delta = [&](const std::string& piece) {
      std::string out;
      if (!text_open) {
        text_open = true;
        out += event("content_block_start", {{"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}});
      }
      return out + event("content_block_delta", {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", piece}}}});
    };
    const PumpEnd end = pump(
        *exchange, sink,
        [&](Event& e) -> std::optional<std::string> {
          if (!e.finished) {
            const std::string piece = calls ? calls->feed(e.text) : e.text;
            return piece.empty() ? std::string() : text_delta(piece);
          }
          if (e.result.finish_reason == "error" || e.result.finish_reason == "cancelled") {
            const std::string why = e.result.error.empty() ? e.result.finish_reason : e.result.error;
            write(event("error", {{"error", anthropic_error(500, "generation failed: " + why)["error"]}}));
            return std::nullopt;
          }
          ParsedAnswer answer = calls ? calls->finish(e.result.tail) : ParsedAnswer{e.result.tail, std::nullopt};
          std::string out;
          if (!answer.content.empty() || (!answer.calls && !text_open)) out += text_delta(answer.content);
          int index = 0;
          if (text_open) {
            out += event("content_block_stop", {{"index", 0}});
            index = 1;
          }
          if (answer.calls) {
            for (const json& call : *answer.calls) {
              json block = tool_use_block(call);
              json start_block = block;
              start_block["input"] = json::object();
              out += event("content_block_start", {{"index", index}, {"content_block", start_block}});
              out += event("content_block_delta", {{"index", index}, {"delta", {{"type", "input_json_delta"}, {"partial_json", block["input"].dump()}}}});
              out += event("content_block_stop", {{"index", index}});
              ++index;
            }
          }
          out += event("message_delta",
                       {{"delta", {{"stop_reason", stop_reason(e.result, answer.calls.has_value())},
                                   {"stop_sequence", e.result.stop_string.empty() ? json(nullptr) : json(e.result.stop_string)}}},
                        {"usage", {{"output_tokens", e.result.completion_tokens}}}});
          out += event("message_stop", json::object());
          return out;
        },
        [&] {
          return event("error", {{"error", {{"type", "overloaded_error"},
                                            {"message", "The server is shutting down: this stream was ended after the shutdown grace period."}}}});
        });
    if (end == PumpEnd::failed) return false;
    if (end == PumpEnd::done) sink.done();
    return true;
  });
}

}  // namespace hearth::server
