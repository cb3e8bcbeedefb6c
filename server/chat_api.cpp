// /v1/chat/completions and /v1/completions: OpenAI's chat and legacy completion objects, whole
// or streamed as chunks.
#include <fmt/format.h>

#include <algorithm>
#include <ctime>

#include "server/server_impl.h"

namespace hearth::server {

using json = nlohmann::ordered_json;

namespace {

// OpenAI's usage object; `cached_tokens`: prompt tokens whose KV the prompt cache held.
json usage_json(int32_t prompt_tokens, int32_t completion_tokens, int32_t cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

// The legacy completions `logprobs` object for these tokens (`text_offset` counted from the
// first of them when `with_offsets`).
json completion_logprobs(const engine::Tokenizer& tok, std::span<const engine::SampledToken> sampled, bool with_offsets) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t offset = 0;
  for (const auto& s : sampled) {
    const std::string piece = tok.token_to_piece(s.token, true);
    tokens.push_back(piece);
    token_logprobs.push_back(s.logprob);
    json alternatives = json::object();
    for (const auto& t : s.top) alternatives[tok.token_to_piece(t.token, true)] = t.logprob;
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += piece.size();
  }
  json out = {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}};
  if (with_offsets) out["text_offset"] = offsets;
  return out;
}

// The deltas that stream the calls as OpenAI does: per call, one with the id, type and name
// (empty arguments), then one with the arguments.
std::vector<json> call_deltas(const json& calls, bool legacy) {
  std::vector<json> out;
  for (size_t k = 0; k < calls.size(); ++k) {
    const json& call = calls[k];
    if (legacy) {
      out.push_back({{"function_call", {{"name", call["function"]["name"]}, {"arguments", ""}}}});
      out.push_back({{"function_call", {{"arguments", call["function"]["arguments"]}}}});
    } else {
      out.push_back({{"tool_calls", json::array({{{"index", k}, {"id", call["id"]}, {"type", "function"},
                                                  {"function", {{"name", call["function"]["name"]}, {"arguments", ""}}}}})}});
      out.push_back({{"tool_calls", json::array({{{"index", k}, {"function", {{"arguments", call["function"]["arguments"]}}}}})}});
    }
  }
  return out;
}

}  // namespace

void OpenAiServer::Impl::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  engine::Model* m = accepting(res);
  if (m == nullptr) return;
  const std::optional<json> body = parse_body(req, res);
  if (!body) return;
  CompletionRequest r;
  std::shared_ptr<Exchange> exchange;
  try {
    r = parse_completion_request(*body, chat, tool_format);
    exchange = start(*m, r, prompt_tokens(*m, r), chat ? "messages" : "prompt", res);
  } catch (const ApiError& e) {
    send_error(res, e);
    return;
  }
  if (!exchange) return;

  const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created_at = static_cast<int64_t>(std::time(nullptr));
  const std::string model_name = options.model_id;
  const engine::Tokenizer& tok = m->tokenizer();
  const int32_t n_prompt = exchange->n_prompt;
  const bool tools_active = chat && r.tools && r.tools->choice != ToolSpec::Choice::None;

  if (!r.stream) {
    std::optional<std::vector<ChoiceResult>> results = collect(*exchange, res);
    if (!results) return;
    int32_t completion_tokens = 0, cached_tokens = 0;
    json choices = json::array();
    for (int i = 0; i < r.n; ++i) {
      const ChoiceResult& c = (*results)[static_cast<size_t>(i)];
      completion_tokens += c.result.completion_tokens;
      cached_tokens = std::max(cached_tokens, c.result.cached_tokens);
      json choice = {{"index", i}, {"finish_reason", c.result.finish_reason}, {"logprobs", nullptr}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", c.text}};
        if (tools_active) {
          ParsedAnswer answer = parse_tool_calls(c.text, *r.tools);
          if (answer.calls) {
            choice["message"]["content"] = answer.content.empty() ? json(nullptr) : json(answer.content);
            if (r.tools->legacy) {
              choice["message"]["function_call"] = (*answer.calls)[0]["function"];
              choice["finish_reason"] = "function_call";
            } else {
              choice["message"]["tool_calls"] = std::move(*answer.calls);
              choice["finish_reason"] = "tool_calls";
            }
          }
        }
        if (r.logprobs) {
          json content = json::array();
          for (const auto& s : c.sampled) content.push_back(logprob_entry(tok, s));
          choice["logprobs"] = {{"content", content}};
        }
      } else {
        choice["text"] = c.text;
        if (r.logprobs) choice["logprobs"] = completion_logprobs(tok, c.sampled, true);
      }
      choices.push_back(choice);
    }
    json out = {{"id", id},
                {"object", chat ? "chat.completion" : "text_completion"},
                {"created", created_at},
                {"model", model_name},
                {"system_fingerprint", fingerprint},
                {"choices", choices},
                {"usage", usage_json(n_prompt, completion_tokens, cached_tokens)}};
    res.set_content(dump(out), "application/json");
    return;
  }

  // Streamed: Server-Sent Events as OpenAI sends them.
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  const std::string fp = fingerprint;
  auto chunk = [=](json choices) {
    json c = {{"id", id},       {"object", chunk_object}, {"created", created_at},
              {"model", model_name}, {"system_fingerprint", fp}, {"choices", std::move(choices)}};
    if (r.include_usage) c["usage"] = nullptr;
    return sse(c);
  };
  auto choice_delta = [chat](int index, const std::string& text) {
    if (chat) return json{{"index", index}, {"delta", {{"content", text}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    return json{{"index", index}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  };
  stream_events(res, exchange, [=, this, &tok](httplib::DataSink& sink) {
    auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    if (chat) {  // the first delta of each choice carries the role
      for (int i = 0; i < r.n; ++i) {
        json first = {{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                      {"finish_reason", nullptr}};
        if (!write(chunk(json::array({first})))) {
          exchange->cancel();
          return false;
        }
      }
    }
    int32_t completion_tokens = 0, cached_tokens = 0;
    // With tools, content streams as far as it is certainly not a call (tool_calls.h).
    std::vector<std::unique_ptr<ToolCallStream>> calls;
    for (int i = 0; tools_active && i < r.n; ++i) calls.push_back(std::make_unique<ToolCallStream>(*r.tools));
    const PumpEnd end = pump(
        *exchange, sink,
        [&](Event& e) -> std::optional<std::string> {
          if (!e.finished) {
            std::string text = e.text;
            if (tools_active) text = calls[static_cast<size_t>(e.choice)]->feed(text);
            if (text.empty() && !r.logprobs) return std::string();
            json delta = choice_delta(e.choice, text);
            if (r.logprobs) {
              if (chat) {
                delta["logprobs"] = {{"content", json::array({logprob_entry(tok, *e.sampled)})}};
              } else {
                delta["logprobs"] = completion_logprobs(tok, std::span(&*e.sampled, 1), false);
              }
            }
            return chunk(json::array({delta}));
          }
          completion_tokens += e.result.completion_tokens;
          cached_tokens = std::max(cached_tokens, e.result.cached_tokens);
          if (e.result.finish_reason == "error" || e.result.finish_reason == "cancelled") {
            write(sse(error_body(fmt::format("generation failed: {}", e.result.error.empty() ? e.result.finish_reason : e.result.error),
                                 "server_error", "", "")));
            return std::nullopt;
          }
          std::string out;
          std::string finish_reason = e.result.finish_reason;
          if (tools_active) {
            ParsedAnswer answer = calls[static_cast<size_t>(e.choice)]->finish(e.result.tail);
            if (!answer.content.empty()) out += chunk(json::array({choice_delta(e.choice, answer.content)}));
            if (answer.calls) {
              for (json& d : call_deltas(*answer.calls, r.tools->legacy)) {
                out += chunk(json::array({json{{"index", e.choice}, {"delta", std::move(d)}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
              }
              finish_reason = r.tools->legacy ? "function_call" : "tool_calls";
            }
          } else if (!e.result.tail.empty()) {
            out += chunk(json::array({choice_delta(e.choice, e.result.tail)}));
          }
          json last = chat ? json{{"index", e.choice}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}
                           : json{{"index", e.choice}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
          return out + chunk(json::array({last}));
        },
        [] {
          return sse(error_body("The server is shutting down: this stream was ended after the shutdown grace period.",
                                "server_error", "", "server_shutting_down"));
        });
    if (end == PumpEnd::failed) return false;
    if (end == PumpEnd::ended) return true;
    std::string tail;
    if (r.include_usage) {
      json u = {{"id", id},
                {"object", chunk_object},
                {"created", created_at},
                {"model", model_name},
                {"system_fingerprint", fp},
                {"choices", json::array()},
                {"usage", usage_json(n_prompt, completion_tokens, cached_tokens)}};
      tail += sse(u);
    }
    tail += "data: [DONE]\n\n";
    if (!write(tail)) return false;
    sink.done();
    return true;
  });
}

}  // namespace hearth::server
