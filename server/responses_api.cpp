// /v1/responses: OpenAI's Responses API. A response is created whole or streamed as typed
// events (response.created, response.output_item.added, response.output_text.delta, ...,
// response.completed); its output items are an assistant message and function calls. Stored
// responses (store: true, the default) are kept in memory, the oldest dropped past
// --stored-responses, for `previous_response_id` and GET / DELETE /v1/responses/{id}.
#include <fmt/format.h>

#include <cmath>
#include <ctime>
#include <list>
#include <unordered_map>

#include "server/responses_request.h"
#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

struct OpenAiServer::Impl::StoredResponses {
  struct Entry {
    json response;      // the response object, as returned
    json conversation;  // its turns in chat form, output included (the next turn's history)
  };
  std::mutex mutex;
  size_t capacity = 256;
  std::list<std::string> order;  // oldest first
  std::unordered_map<std::string, std::pair<Entry, std::list<std::string>::iterator>> entries;

  void put(const std::string& id, Entry e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (capacity == 0) return;
    while (entries.size() >= capacity) {
      entries.erase(order.front());
      order.pop_front();
    }
    order.push_back(id);
    entries.emplace(id, std::make_pair(std::move(e), std::prev(order.end())));
  }
  std::optional<Entry> get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = entries.find(id);
    if (it == entries.end()) return std::nullopt;
    return it->second.first;
  }
  bool erase(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = entries.find(id);
    if (it == entries.end()) return false;
    order.erase(it->second.second);
    entries.erase(it);
    return true;
  }
};

void OpenAiServer::Impl::init_responses() {
  stored = std::make_shared<StoredResponses>();
  stored->capacity = options.stored_responses;
}

namespace {

json response_usage(int32_t input, int32_t output, int32_t cached) {
  return {{"input_tokens", input},
          {"input_tokens_details", {{"cached_tokens", cached}}},
          {"output_tokens", output},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", input + output}};
}

json message_item(const std::string& id, const std::string& text, const char* status, const json& logprobs) {
  json part = {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", logprobs}};
  return {{"type", "message"}, {"id", id}, {"status", status}, {"role", "assistant"}, {"content", json::array({part})}};
}

json call_item(const json& call, const char* status, bool with_arguments = true) {
  return {{"type", "function_call"},
          {"id", "fc_" + call["id"].get<std::string>().substr(5)},
          {"call_id", call["id"]},
          {"name", call["function"]["name"]},
          {"arguments", with_arguments ? call["function"]["arguments"] : json("")},
          {"status", status}};
}

std::string not_found(const std::string& id) { return fmt::format("Response with id '{}' not found.", id); }

}  // namespace

void OpenAiServer::Impl::get_response(const httplib::Request& req, httplib::Response& res) {
  const std::string id = req.matches[1];
  if (std::optional<StoredResponses::Entry> e = stored->get(id)) {
    res.set_content(dump(e->response), "application/json");
    return;
  }
  send_error(res, 404, not_found(id), "invalid_request_error", "response_id", "not_found");
}

void OpenAiServer::Impl::delete_response(const httplib::Request& req, httplib::Response& res) {
  const std::string id = req.matches[1];
  if (!stored->erase(id)) {
    send_error(res, 404, not_found(id), "invalid_request_error", "response_id", "not_found");
    return;
  }
  res.set_content(dump(json{{"id", id}, {"object", "response.deleted"}, {"deleted", true}}), "application/json");
}

void OpenAiServer::Impl::responses(const httplib::Request& req, httplib::Response& res) {
  engine::Model* m = accepting(res);
  if (m == nullptr) return;
  const std::optional<json> body = parse_body(req, res);
  if (!body) return;
  ResponsesRequest r;
  std::shared_ptr<Exchange> exchange;
  try {
    std::optional<StoredResponses::Entry> previous;
    if (const std::optional<std::string> prev = previous_response_id(*body)) {
      previous = stored->get(*prev);
      if (!previous) {
        throw ApiError(400, fmt::format("Previous response with id '{}' not found.", *prev), "invalid_request_error",
                       "previous_response_id", "previous_response_not_found");
      }
    }
    r = parse_responses_request(*body, tool_format, previous ? &previous->conversation : nullptr);
    exchange = start(*m, r.chat, prompt_tokens(*m, r.chat), "input", res);
  } catch (const ApiError& e) {
    send_error(res, e);
    return;
  }
  if (!exchange) return;

  const engine::Tokenizer& tok = m->tokenizer();
  const bool tools_active = r.chat.tools && r.chat.tools->choice != ToolSpec::Choice::None;
  const bool logprobs = r.chat.logprobs;
  // The response object around its output, in the state given.
  const auto shared = std::make_shared<json>(json{{"id", random_id("resp_")},
                                                  {"object", "response"},
                                                  {"created_at", static_cast<int64_t>(std::time(nullptr))},
                                                  {"status", "in_progress"},
                                                  {"background", false},
                                                  {"error", nullptr},
                                                  {"incomplete_details", nullptr},
                                                  {"instructions", r.instructions ? json(*r.instructions) : json(nullptr)},
                                                  {"max_output_tokens", r.max_output_tokens ? json(*r.max_output_tokens) : json(nullptr)},
                                                  {"model", options.model_id},
                                                  {"output", json::array()},
                                                  {"parallel_tool_calls", r.parallel_tool_calls},
                                                  {"previous_response_id", r.previous_response_id ? json(*r.previous_response_id) : json(nullptr)},
                                                  {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
                                                  {"store", r.store},
                                                  {"temperature", std::round(r.chat.sampling.temperature * 1e6) / 1e6},  // what runs (hearth's default when not given)
                                                  {"text", {{"format", r.text_format}}},
                                                  {"tool_choice", r.tool_choice},
                                                  {"tools", r.tools},
                                                  {"top_p", std::round(r.chat.sampling.top_p * 1e6) / 1e6},
                                                  {"truncation", "disabled"},
                                                  {"usage", nullptr},
                                                  {"user", r.user ? json(*r.user) : json(nullptr)},
                                                  {"metadata", r.metadata}});
  // Completes the response: status, output, usage; stores it with its conversation.
  const auto finish = [this, shared, r](const json& output, const engine::SequenceResult& result, int32_t n_prompt,
                                        const std::string& content, const std::optional<json>& calls) {
    json& resp = *shared;
    resp["output"] = output;
    const bool cut = result.finish_reason == "length";
    resp["status"] = cut ? "incomplete" : "completed";
    resp["incomplete_details"] = cut ? json{{"reason", "max_output_tokens"}} : json(nullptr);
    resp["usage"] = response_usage(n_prompt, result.completion_tokens, result.cached_tokens);
    if (r.store) {
      json conversation = r.conversation;
      json turn = {{"role", "assistant"}, {"content", content.empty() && calls ? json(nullptr) : json(content)}};
      if (calls) turn["tool_calls"] = *calls;
      conversation.push_back(std::move(turn));
      stored->put(resp["id"].get<std::string>(), {resp, std::move(conversation)});
    }
  };
  const auto output_of = [](const std::string& message_id, const std::string& content, const std::optional<json>& calls,
                            const json& lps) {
    json output = json::array();
    if (!content.empty() || !calls) output.push_back(message_item(message_id, content, "completed", lps));
    if (calls) {
      for (const json& c : *calls) output.push_back(call_item(c, "completed"));
    }
    return output;
  };
  const std::string message_id = random_id("msg_");

  if (!r.chat.stream) {
    std::optional<std::vector<ChoiceResult>> results = collect(*exchange, res);
    if (!results) return;
    const ChoiceResult& c = results->front();
    ParsedAnswer answer = tools_active ? parse_tool_calls(c.text, *r.chat.tools) : ParsedAnswer{c.text, std::nullopt};
    json lps = json::array();
    if (logprobs) {
      for (const auto& s : c.sampled) lps.push_back(logprob_entry(tok, s));
    }
    finish(output_of(message_id, answer.content, answer.calls, lps), c.result, exchange->n_prompt, answer.content, answer.calls);
    res.set_content(dump(*shared), "application/json");
    return;
  }

  stream_events(res, exchange, [=, this, &tok](httplib::DataSink& sink) {
    int sequence = 0;
    auto event = [&](const std::string& type, json data) {
      data["type"] = type;
      data["sequence_number"] = sequence++;
      return sse(data, type);
    };
    auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    if (!write(event("response.created", {{"response", *shared}})) ||
        !write(event("response.in_progress", {{"response", *shared}}))) {
      exchange->cancel();
      return false;
    }
    std::unique_ptr<ToolCallStream> calls;
    if (tools_active) calls = std::make_unique<ToolCallStream>(*r.chat.tools);
    bool message_open = false;
    std::string text;
    json lps = json::array();
    // Opens the message item at its first text.
    auto open_message = [&]() {
      if (message_open) return std::string();
      message_open = true;
      json item = message_item(message_id, "", "in_progress", json::array());
      item["content"] = json::array();
      return event("response.output_item.added", {{"output_index", 0}, {"item", item}}) +
             event("response.content_part.added",
                   {{"item_id", message_id},
                    {"output_index", 0},
                    {"content_index", 0},
                    {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}, {"logprobs", json::array()}}}});
    };
    auto delta = [&](const std::string& piece, json piece_lps) {
      text += piece;
      return event("response.output_text.delta", {{"item_id", message_id},
                                                  {"output_index", 0},
                                                  {"content_index", 0},
                                                  {"delta", piece},
                                                  {"logprobs", std::move(piece_lps)}});
    };
    const PumpEnd end = pump(
        *exchange, sink,
        [&](Event& e) -> std::optional<std::string> {
          if (!e.finished) {
            json piece_lps = json::array();
            if (logprobs) {
              piece_lps.push_back(logprob_entry(tok, *e.sampled));
              lps.push_back(piece_lps.back());
            }
            const std::string piece = calls ? calls->feed(e.text) : e.text;
            if (piece.empty()) return std::string();
            return open_message() + delta(piece, std::move(piece_lps));
          }
          if (e.result.finish_reason == "error" || e.result.finish_reason == "cancelled") {
            json& resp = *shared;
            resp["status"] = "failed";
            resp["error"] = {{"code", "server_error"},
                             {"message", fmt::format("generation failed: {}", e.result.error.empty() ? e.result.finish_reason : e.result.error)}};
            write(event("response.failed", {{"response", resp}}));
            return std::nullopt;
          }
          ParsedAnswer answer = calls ? calls->finish(e.result.tail) : ParsedAnswer{e.result.tail, std::nullopt};
          std::string out;
          if (!answer.content.empty()) out += open_message() + delta(answer.content, json::array());
          if (!answer.calls && !message_open) out += open_message();  // an empty answer is an empty message
          if (message_open) {
            const json part = {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", lps}};
            out += event("response.output_text.done",
                         {{"item_id", message_id}, {"output_index", 0}, {"content_index", 0}, {"text", text}, {"logprobs", lps}});
            out += event("response.content_part.done", {{"item_id", message_id}, {"output_index", 0}, {"content_index", 0}, {"part", part}});
            out += event("response.output_item.done", {{"output_index", 0}, {"item", message_item(message_id, text, "completed", lps)}});
          }
          if (answer.calls) {
            int index = message_open ? 1 : 0;
            for (const json& c : *answer.calls) {
              const json item = call_item(c, "completed");
              out += event("response.output_item.added", {{"output_index", index}, {"item", call_item(c, "in_progress", false)}});
              out += event("response.function_call_arguments.delta",
                           {{"item_id", item["id"]}, {"output_index", index}, {"delta", item["arguments"]}});
              out += event("response.function_call_arguments.done",
                           {{"item_id", item["id"]}, {"output_index", index}, {"name", item["name"]}, {"arguments", item["arguments"]}});
              out += event("response.output_item.done", {{"output_index", index}, {"item", item}});
              ++index;
            }
          }
          json output = json::array();
          if (message_open) output.push_back(message_item(message_id, text, "completed", lps));
          if (answer.calls) {
            for (const json& c : *answer.calls) output.push_back(call_item(c, "completed"));
          }
          finish(output, e.result, exchange->n_prompt, text, answer.calls);
          const json& resp = *shared;
          out += event(resp["status"] == "incomplete" ? "response.incomplete" : "response.completed", {{"response", resp}});
          return out;
        },
        [&] {
          return event("error", {{"code", "server_shutting_down"},
                                 {"message", "The server is shutting down: this stream was ended after the shutdown grace period."},
                                 {"param", nullptr}});
        });
    if (end == PumpEnd::failed) return false;
    if (end == PumpEnd::done) sink.done();
    return true;
  });
}

}  // namespace hearth::server
