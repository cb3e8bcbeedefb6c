// Tool calls in each format (generic JSON, Hermes <tool_call>, Llama 3.1 JSON): what the model
// is told, the grammar that forces a call (it accepts the format's calls and nothing else), the
// parser (content beside calls, unknown functions, code fences), the streaming splitter (content
// sent as soon as it is certainly not a call), earlier turns written back; and the Responses and
// Messages API bodies translated into chat requests, with errors naming the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "engine/grammar/grammar.h"
#include "engine/grammar/matcher.h"
#include "engine/grammar/vocabulary.h"
#include "server/api_request.h"
#include "server/responses_request.h"
#include "server/tool_calls.h"

namespace hearth::server {
namespace {

using json = nlohmann::ordered_json;
using engine::grammar::CompiledGrammar;
using engine::grammar::GrammarMatcher;
using engine::grammar::Vocabulary;

const json kWeather = {{"type", "function"},
                       {"function",
                        {{"name", "get_weather"},
                         {"description", "Weather in a city"},
                         {"parameters",
                          {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}}}}}};
const json kTime = {{"type", "function"}, {"function", {{"name", "get_time"}, {"parameters", {{"type", "object"}}}}}};

ToolSpec spec(ToolFormat format, const std::string& choice = "required", bool parallel = true) {
  json body = {{"tools", {kWeather, kTime}}, {"tool_choice", choice}, {"parallel_tool_calls", parallel}};
  std::optional<ToolSpec> s = parse_tools(body, format);
  EXPECT_TRUE(s.has_value());
  return *s;
}

bool grammar_accepts(const std::string& gbnf, const std::string& text) {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(1, static_cast<char>(b));
  auto vocab = std::make_shared<const Vocabulary>(std::move(bytes));
  GrammarMatcher m(std::make_shared<CompiledGrammar>(engine::grammar::parse_gbnf(gbnf), vocab, std::vector<engine::Token>{}));
  return m.accept_bytes(text) && m.can_end();
}

TEST(ToolFormat, DetectedFromTheTemplate) {
  EXPECT_EQ(detect_tool_format("{% for tool in tools %}<tool_call>{{ tool }}</tool_call>"), ToolFormat::Hermes);
  EXPECT_EQ(detect_tool_format("{{- \"Environment: ipython\\n\" }}"), ToolFormat::Llama3);
  EXPECT_EQ(detect_tool_format("<|python_tag|>"), ToolFormat::Llama3);
  EXPECT_EQ(detect_tool_format("<|im_start|>{{ message.role }}"), ToolFormat::Generic);
  EXPECT_EQ(tool_format_from_name("hermes"), ToolFormat::Hermes);
  EXPECT_FALSE(tool_format_from_name("mistral").has_value());
}

TEST(ToolFormat, GrammarsAcceptTheFormatsCallsOnly) {
  const std::string generic = tool_call_grammar(spec(ToolFormat::Generic));
  EXPECT_TRUE(grammar_accepts(generic, R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]})"));
  EXPECT_TRUE(grammar_accepts(generic, R"({"tool_calls": [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "x"}}]})"));
  EXPECT_FALSE(grammar_accepts(generic, R"({"tool_calls": [{"name": "launch", "arguments": {}}]})"));
  EXPECT_FALSE(grammar_accepts(generic, R"({"tool_calls": [{"name": "get_weather", "arguments": {}}]})"));  // city required

  const std::string hermes = tool_call_grammar(spec(ToolFormat::Hermes));
  EXPECT_TRUE(grammar_accepts(hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"));
  EXPECT_TRUE(grammar_accepts(hermes, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n"
                                      "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(grammar_accepts(hermes, "{\"name\": \"get_time\", \"arguments\": {}}"));
  const std::string hermes_one = tool_call_grammar(spec(ToolFormat::Hermes, "required", false));
  EXPECT_FALSE(grammar_accepts(hermes_one, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n"
                                          "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));

  const std::string llama = tool_call_grammar(spec(ToolFormat::Llama3));
  EXPECT_TRUE(grammar_accepts(llama, R"({"name": "get_weather", "parameters": {"city": "Oslo"}})"));
  EXPECT_FALSE(grammar_accepts(llama, R"({"name": "get_weather", "arguments": {"city": "Oslo"}})"));

  // A named function: only it.
  ToolSpec named = spec(ToolFormat::Hermes);
  named.choice = ToolSpec::Choice::Named;
  named.named = "get_time";
  EXPECT_FALSE(grammar_accepts(tool_call_grammar(named),
                               "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a\"}}\n</tool_call>"));
  // auto and none constrain nothing.
  EXPECT_EQ(tool_call_grammar(spec(ToolFormat::Hermes, "auto")), "");
}

TEST(ToolFormat, ParsesEachFormat) {
  ParsedAnswer g = parse_tool_calls(R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]})",
                                    spec(ToolFormat::Generic, "auto"));
  ASSERT_TRUE(g.calls);
  EXPECT_EQ((*g.calls)[0]["function"]["name"], "get_weather");
  EXPECT_EQ(json::parse((*g.calls)[0]["function"]["arguments"].get<std::string>()), json({{"city", "Oslo"}}));
  EXPECT_TRUE((*g.calls)[0]["id"].get<std::string>().starts_with("call_"));
  EXPECT_EQ(g.content, "");

  ParsedAnswer h = parse_tool_calls("Let me look.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n"
                                    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>",
                                    spec(ToolFormat::Hermes, "auto"));
  ASSERT_TRUE(h.calls);
  ASSERT_EQ(h.calls->size(), 2u);
  EXPECT_EQ((*h.calls)[1]["function"]["name"], "get_weather");
  EXPECT_EQ(h.content, "Let me look.\n");

  ParsedAnswer l = parse_tool_calls(R"({"name": "get_weather", "parameters": {"city": "Lima"}})", spec(ToolFormat::Llama3, "auto"));
  ASSERT_TRUE(l.calls);
  EXPECT_EQ(json::parse((*l.calls)[0]["function"]["arguments"].get<std::string>()), json({{"city", "Lima"}}));

  // A last call cut short (max_tokens) is dropped; the whole calls before it stand.
  ParsedAnswer cut = parse_tool_calls("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"na",
                                      spec(ToolFormat::Hermes, "auto"));
  ASSERT_TRUE(cut.calls);
  EXPECT_EQ(cut.calls->size(), 1u);

  // Not calls: an unknown function, text, a call of the wrong format, parallel calls when one is allowed.
  EXPECT_FALSE(parse_tool_calls("<tool_call>\n{\"name\": \"nuke\", \"arguments\": {}}\n</tool_call>", spec(ToolFormat::Hermes, "auto")).calls);
  EXPECT_FALSE(parse_tool_calls("It is sunny.", spec(ToolFormat::Generic, "auto")).calls);
  EXPECT_FALSE(parse_tool_calls(R"({"name": "get_time", "parameters": {}})", spec(ToolFormat::Generic, "auto")).calls);
  EXPECT_FALSE(parse_tool_calls("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
                                "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
                                spec(ToolFormat::Hermes, "auto", false)).calls);
  // tool_choice none: never a call.
  EXPECT_FALSE(parse_tool_calls(R"({"tool_calls": [{"name": "get_time", "arguments": {}}]})", spec(ToolFormat::Generic, "none")).calls);
}

// Feeds `pieces` one by one; returns what was streamed before the end, and the end.
std::pair<std::string, ParsedAnswer> stream(const ToolSpec& tools, const std::vector<std::string>& pieces) {
  ToolCallStream s(tools);
  std::string sent;
  for (const std::string& p : pieces) sent += s.feed(p);
  return {sent, s.finish("")};
}

TEST(ToolCallStream, ContentStreamsAtOnceAndCallsAreHeld) {
  const ToolSpec generic = spec(ToolFormat::Generic, "auto");
  auto [text_sent, text_end] = stream(generic, {"It", " is", " sunny."});
  EXPECT_EQ(text_sent, "It is sunny.");  // not held to the end
  EXPECT_FALSE(text_end.calls);
  EXPECT_EQ(text_end.content, "");

  auto [call_sent, call_end] = stream(generic, {"{\"tool_calls\": [{\"name\": \"get_time\",", " \"arguments\": {}}]}"});
  EXPECT_EQ(call_sent, "");
  ASSERT_TRUE(call_end.calls);

  // JSON that is not a call comes out whole at the end.
  auto [json_sent, json_end] = stream(generic, {"{\"a\":", " 1}"});
  EXPECT_EQ(json_sent, "");
  EXPECT_FALSE(json_end.calls);
  EXPECT_EQ(json_end.content, "{\"a\": 1}");

  const ToolSpec hermes = spec(ToolFormat::Hermes, "auto");
  auto [h_sent, h_end] = stream(hermes, {"Checking", " now.", "\n<tool", "_call>\n{\"name\": \"get_time\", ", "\"arguments\": {}}\n</tool_call>"});
  EXPECT_EQ(h_sent, "Checking now.\n");  // "<tool" was held until it turned out to open a call
  ASSERT_TRUE(h_end.calls);
  EXPECT_EQ(h_end.content, "");
  auto [lt_sent, lt_end] = stream(hermes, {"a <", "b"});
  EXPECT_EQ(lt_sent + lt_end.content, "a <b");  // a '<' that opened no call is content
  EXPECT_FALSE(lt_end.calls);
}

TEST(ToolFormat, EarlierTurnsRoundTrip) {
  const json calls = json::array({{{"id", "call_1"}, {"type", "function"},
                                   {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Oslo"})"}}}}});
  for (ToolFormat f : {ToolFormat::Generic, ToolFormat::Hermes, ToolFormat::Llama3}) {
    const std::string text = tool_calls_as_text(calls, "messages[1].tool_calls", f);
    ParsedAnswer back = parse_tool_calls(text, spec(f, "auto"));
    ASSERT_TRUE(back.calls) << tool_format_name(f) << ": " << text;
    EXPECT_EQ((*back.calls)[0]["function"]["name"], "get_weather");
    EXPECT_EQ(json::parse((*back.calls)[0]["function"]["arguments"].get<std::string>()), json({{"city", "Oslo"}}));
  }
  EXPECT_EQ(tool_result_turn("call_1", "get_weather", "21C", ToolFormat::Hermes).content, "<tool_response>\n21C\n</tool_response>");
  EXPECT_EQ(tool_result_turn("call_1", "get_weather", "21C", ToolFormat::Llama3).role, "ipython");
}

TEST(ToolFormat, ChatMessagesInTheFormat) {
  const json body = {{"messages",
                      {{{"role", "user"}, {"content", "Weather in Oslo and Rome?"}},
                       {{"role", "assistant"},
                        {"content", nullptr},
                        {"tool_calls",
                         {{{"id", "call_1"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Oslo"})"}}}},
                          {{"id", "call_2"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Rome"})"}}}}}}},
                       {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "5C"}},
                       {{"role", "tool"}, {"tool_call_id", "call_2"}, {"content", "20C"}}}},
                     {"tools", {kWeather}}};
  const CompletionRequest hermes = parse_completion_request(body, true, ToolFormat::Hermes);
  ASSERT_EQ(hermes.messages.size(), 4u);  // system (tools), user, assistant, one user turn with both results
  EXPECT_EQ(hermes.messages[0].role, "system");
  // The tools one per line as Qwen's template writes them (tojson: keys in order, ", " and ": ").
  EXPECT_NE(hermes.messages[0].content.find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "),
            std::string::npos)
      << hermes.messages[0].content;
  EXPECT_EQ(hermes.messages[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n"
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>");
  EXPECT_EQ(hermes.messages[3].content, "<tool_response>\n5C\n</tool_response>\n<tool_response>\n20C\n</tool_response>");

  const CompletionRequest llama = parse_completion_request(body, true, ToolFormat::Llama3);
  ASSERT_EQ(llama.messages.size(), 5u);
  EXPECT_EQ(llama.messages[0].content, "Environment: ipython");
  EXPECT_TRUE(llama.messages[1].content.starts_with("Given the following functions"));
  EXPECT_TRUE(llama.messages[1].content.ends_with("Weather in Oslo and Rome?"));
  EXPECT_EQ(llama.messages[3].role, "ipython");
}

std::string param_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e.param;
  }
  return "(no error)";
}

TEST(ResponsesRequest, InputItemsBecomeChatTurns) {
  const json body = {{"model", "m"},
                     {"instructions", "Be brief."},
                     {"input",
                      {{{"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Weather?"}}}}},
                       {{"type", "function_call"}, {"call_id", "call_9"}, {"name", "get_weather"}, {"arguments", R"({"city":"Oslo"})"}},
                       {{"type", "function_call_output"}, {"call_id", "call_9"}, {"output", "5C"}}}},
                     {"tools", {{{"type", "function"}, {"name", "get_weather"}, {"parameters", kWeather["function"]["parameters"]}}}},
                     {"tool_choice", {{"type", "function"}, {"name", "get_weather"}}},
                     {"max_output_tokens", 50},
                     {"include", json::array()}};
  const ResponsesRequest r = parse_responses_request(body, ToolFormat::Generic, nullptr);
  ASSERT_EQ(r.conversation.size(), 3u);
  EXPECT_EQ(r.conversation[1]["tool_calls"][0]["id"], "call_9");
  EXPECT_EQ(r.conversation[2]["role"], "tool");
  EXPECT_EQ(r.chat.max_tokens, 50);
  ASSERT_TRUE(r.chat.tools);
  EXPECT_EQ(r.chat.tools->choice, ToolSpec::Choice::Named);
  EXPECT_FALSE(r.chat.grammar.empty());
  EXPECT_EQ(r.chat.messages.front().role, "system");
  EXPECT_NE(r.chat.messages.front().content.find("Be brief."), std::string::npos);

  const json previous = json::array({{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Hello"}}});
  const ResponsesRequest next = parse_responses_request({{"input", "Again"}}, ToolFormat::Generic, &previous);
  ASSERT_EQ(next.conversation.size(), 3u);
  EXPECT_EQ(next.chat.messages.size(), 3u);

  auto with = [](json extra) {
    json b = {{"input", "x"}};
    b.update(extra);
    return [b] { parse_responses_request(b, ToolFormat::Generic, nullptr); };
  };
  EXPECT_EQ(param_of(with({{"nope", 1}})), "nope");
  EXPECT_EQ(param_of(with({{"tools", {{{"type", "file_search"}}}}})), "tools[0].type");
  EXPECT_EQ(param_of(with({{"max_output_tokens", 0}})), "max_output_tokens");
  EXPECT_EQ(param_of(with({{"text", {{"format", {{"type", "json_schema"}, {"name", "x"}, {"schema", {{"not", json::object()}}}}}}}})),
            "text.format");
  EXPECT_EQ(param_of(with({{"reasoning", {{"effort", "high"}}}})), "reasoning");
  EXPECT_EQ(param_of(with({{"input", {{{"type", "item_reference"}, {"id", "x"}}}}})), "input[0].type");
}

TEST(MessagesRequest, AnthropicBodiesBecomeChatRequests) {
  const json body = {{"model", "m"},
                     {"max_tokens", 64},
                     {"system", "Be brief."},
                     {"stop_sequences", {"END"}},
                     {"tools", {{{"name", "get_weather"}, {"input_schema", kWeather["function"]["parameters"]}}}},
                     {"tool_choice", {{"type", "any"}, {"disable_parallel_tool_use", true}}},
                     {"messages",
                      {{{"role", "user"}, {"content", "Weather in Oslo?"}},
                       {{"role", "assistant"},
                        {"content", {{{"type", "text"}, {"text", "Checking."}},
                                     {{"type", "tool_use"}, {"id", "toolu_1"}, {"name", "get_weather"}, {"input", {{"city", "Oslo"}}}}}}},
                       {{"role", "user"}, {"content", {{{"type", "tool_result"}, {"tool_use_id", "toolu_1"}, {"content", "5C"}}}}}}}};
  const MessagesRequest r = parse_messages_request(body, ToolFormat::Generic);
  EXPECT_EQ(r.chat.max_tokens, 64);
  EXPECT_EQ(r.stop_sequences, std::vector<std::string>{"END"});
  ASSERT_TRUE(r.chat.tools);
  EXPECT_EQ(r.chat.tools->choice, ToolSpec::Choice::Required);
  EXPECT_FALSE(r.chat.tools->parallel);
  ASSERT_EQ(r.chat.messages.size(), 4u);  // system, user, assistant (text + call), the result
  EXPECT_NE(r.chat.messages[2].content.find("Checking."), std::string::npos);
  EXPECT_NE(r.chat.messages[2].content.find("get_weather"), std::string::npos);
  EXPECT_NE(r.chat.messages[3].content.find("5C"), std::string::npos);

  auto with = [](json extra) {
    json b = {{"max_tokens", 8}, {"messages", {{{"role", "user"}, {"content", "x"}}}}};
    b.update(extra);
    return [b] { parse_messages_request(b, ToolFormat::Generic); };
  };
  EXPECT_EQ(param_of([] { parse_messages_request({{"messages", {{{"role", "user"}, {"content", "x"}}}}}, ToolFormat::Generic); }),
            "max_tokens");
  EXPECT_EQ(param_of(with({{"temperature", 1.5}})), "temperature");
  EXPECT_EQ(param_of(with({{"thinking", {{"type", "enabled"}, {"budget_tokens", 1024}}}})), "thinking");
  EXPECT_EQ(param_of(with({{"messages", {{{"role", "user"}, {"content", {{{"type", "image"}}}}}}}})), "messages.0.content.0.type");
  EXPECT_EQ(param_of(with({{"tools", {{{"type", "bash_20250124"}, {"name", "bash"}}}}})), "tools.0.type");
  EXPECT_EQ(param_of(with({{"max_tokens", 0}})), "max_tokens");
}

}  // namespace
}  // namespace hearth::server
