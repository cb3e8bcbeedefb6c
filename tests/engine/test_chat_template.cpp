// Chat templates against the real Jinja templates of each family, rendered by Python's jinja2 the
// way transformers does (fixtures by scripts/reference/make_chat_fixtures.py): detection of every
// template, and apply_chat_template byte for byte equal to what the template renders.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/text/chat_template.h"
#include "engine/format/gguf.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using json = nlohmann::json;

constexpr ChatTemplateKind kAllKinds[] = {
    ChatTemplateKind::ChatML, ChatTemplateKind::Llama3, ChatTemplateKind::Llama2, ChatTemplateKind::Mistral,
    ChatTemplateKind::Zephyr, ChatTemplateKind::Gemma,  ChatTemplateKind::Phi3,   ChatTemplateKind::DeepSeek,
};

json load_fixture(const std::string& name) {
  return json::parse(test::read_file_text(test::fixtures_dir() / "chat" / (name + ".json")));
}

std::vector<ChatMessage> messages_of(const json& conversation) {
  std::vector<ChatMessage> messages;
  for (const json& m : conversation.at("messages")) {
    messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  }
  return messages;
}

class ChatTemplateFamily : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = load_fixture(GetParam());
    const auto kind = chat_template_from_name(GetParam());
    ASSERT_TRUE(kind.has_value()) << GetParam();
    kind_ = *kind;
  }
  json fixture_;
  ChatTemplateKind kind_{};
};

TEST_P(ChatTemplateFamily, DetectsEveryTemplateOfTheFamily) {
  for (const json& t : fixture_.at("templates")) {
    SCOPED_TRACE(t.at("source").get<std::string>());
    const auto detected = detect_chat_template(t.at("template").get<std::string>());
    ASSERT_TRUE(detected.has_value());
    EXPECT_EQ(chat_template_name(*detected), GetParam());
  }
}

TEST_P(ChatTemplateFamily, FindsTheDefaultSystemMessage) {
  for (const json& t : fixture_.at("templates")) {
    SCOPED_TRACE(t.at("source").get<std::string>());
    const std::string expected = t.value("default_system", std::string());
    EXPECT_EQ(chat_template_default_system(t.at("template").get<std::string>()), expected);
  }
}

// The options an engine would derive from the template and the tokenizer.
ChatTemplateOptions options_for(const json& t, const json& conversation) {
  ChatTemplateOptions options;
  options.add_generation_prompt = conversation.at("add_generation_prompt").get<bool>();
  options.bos_token = t.at("bos_token").get<std::string>();
  options.eos_token = t.at("eos_token").get<std::string>();
  options.default_system = chat_template_default_system(t.at("template").get<std::string>());
  return options;
}

TEST_P(ChatTemplateFamily, RendersExactlyLikeTheJinjaTemplate) {
  int compared = 0;
  int refused = 0;
  for (const json& t : fixture_.at("templates")) {
    if (!t.at("render").get<bool>()) continue;
    SCOPED_TRACE(t.at("source").get<std::string>());
    const json& cases = t.at("cases");
    const json& conversations = fixture_.at("conversations");
    ASSERT_EQ(cases.size(), conversations.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      const json& c = cases[i];
      const json& conversation = conversations[i];
      ASSERT_EQ(c.at("name"), conversation.at("name"));
      SCOPED_TRACE(c.at("name").get<std::string>());
      const auto messages = messages_of(conversation);
      const ChatTemplateOptions options = options_for(t, conversation);
      if (c.contains("error")) {
        EXPECT_THROW(apply_chat_template(kind_, messages, options), Error) << c.at("error");
        ++refused;
      } else {
        EXPECT_EQ(apply_chat_template(kind_, messages, options), c.at("expected").get<std::string>());
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 5);
  (void)refused;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ChatTemplateFamily,
                         testing::Values("chatml", "llama3", "llama2", "mistral", "zephyr", "gemma", "phi3",
                                         "deepseek"),
                         [](const testing::TestParamInfo<std::string>& param_info) { return param_info.param; });

TEST(ChatTemplate, UnrelatedTemplatesAreNotRecognized) {
  const json fixture = load_fixture("unknown");
  ASSERT_FALSE(fixture.at("templates").empty());
  for (const json& t : fixture.at("templates")) {
    SCOPED_TRACE(t.at("source").get<std::string>());
    const auto detected = detect_chat_template(t.at("template").get<std::string>());
    EXPECT_FALSE(detected.has_value()) << "detected as " << chat_template_name(*detected);
  }
  EXPECT_FALSE(detect_chat_template("{{ messages[0]['content'] }}").has_value());
}

TEST(ChatTemplate, NamesRoundTrip) {
  for (const ChatTemplateKind kind : kAllKinds) {
    const std::string_view name = chat_template_name(kind);
    const auto back = chat_template_from_name(name);
    ASSERT_TRUE(back.has_value()) << name;
    EXPECT_EQ(*back, kind) << name;
  }
  EXPECT_EQ(chat_template_name(ChatTemplateKind::Gemma), "gemma");
  EXPECT_EQ(chat_template_from_name("gemma"), ChatTemplateKind::Gemma);
  EXPECT_FALSE(chat_template_from_name("").has_value());
  EXPECT_FALSE(chat_template_from_name("ChatML").has_value());
  EXPECT_FALSE(chat_template_from_name("vicuna").has_value());
}

TEST(ChatTemplate, UnknownRoleIsAnErrorNamingTheRole) {
  const std::vector<ChatMessage> messages = {{"user", "What is the weather?"}, {"tool", "{\"temp\": 20}"}};
  for (const ChatTemplateKind kind : kAllKinds) {
    SCOPED_TRACE(chat_template_name(kind));
    try {
      apply_chat_template(kind, messages, {});
      ADD_FAILURE() << "no error for role 'tool'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'tool'"), std::string::npos) << e.what();
    }
  }
}

TEST(ChatTemplate, EmptyConversationIsAnError) {
  for (const ChatTemplateKind kind : kAllKinds) {
    EXPECT_THROW(apply_chat_template(kind, {}, {}), Error) << chat_template_name(kind);
  }
}

TEST(ChatTemplate, SystemMessageOnlyFirstWhereTheTemplateHasNoPlaceForIt) {
  // Roles alternate in the Jinja, and a system message at an odd position would be dropped
  // (Llama 2) or rendered as a turn of its own (Gemma): refused instead.
  const std::vector<ChatMessage> messages = {{"user", "Hi"}, {"system", "Be brief."}};
  for (const ChatTemplateKind kind : {ChatTemplateKind::Llama2, ChatTemplateKind::Mistral, ChatTemplateKind::Gemma}) {
    EXPECT_THROW(apply_chat_template(kind, messages, {}), Error) << chat_template_name(kind);
  }
  EXPECT_NO_THROW(apply_chat_template(ChatTemplateKind::ChatML, messages, {}));
}

TEST(ChatTemplate, DefaultSystemYieldsToTheConversationsOwn) {
  ChatTemplateOptions options;
  options.default_system = "Default.";
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::ChatML, {{"user", "Hi"}}, options),
            "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::ChatML, {{"system", "Mine."}, {"user", "Hi"}}, options),
            "<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, DefaultSystemOnlyFromALiteral) {
  EXPECT_EQ(chat_template_default_system(R"({{ '<|im_start|>system\nIt\'s me.<|im_end|>\n' }})"), "It's me.");
  EXPECT_EQ(chat_template_default_system("{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>' }}"), "");
  EXPECT_EQ(chat_template_default_system("<|im_start|>system\n{{ system }}<|im_end|>"), "");
  EXPECT_EQ(chat_template_default_system("<|im_start|>systemX<|im_end|>"), "");
  EXPECT_EQ(chat_template_default_system("<|im_start|>system\nno end"), "");
}

TEST(ChatTemplate, StripLeavesMalformedUtf8Alone) {
  // Llama 3 strips contents; a lone continuation byte or a truncated sequence is not whitespace.
  ChatTemplateOptions no_prompt;
  no_prompt.add_generation_prompt = false;
  const std::string content = std::string("\x80 x \xE3\x80", 6);
  const std::string out = apply_chat_template(ChatTemplateKind::Llama3, {{"user", content}}, no_prompt);
  EXPECT_EQ(out, "<|start_header_id|>user<|end_header_id|>\n\n" + content + "<|eot_id|>");
  const std::string padded =
      apply_chat_template(ChatTemplateKind::Llama3, {{"user", " \xE3\x80\x80x\xC2\xA0"}}, no_prompt);
  EXPECT_EQ(padded, "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

// The template in the default SmolLM2 model file, read by hearth's own GGUF reader.
TEST(ChatTemplate, SmolLM2ModelFile) {
  const auto path = test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present: run scripts/get-model.sh smollm2";
  const auto file = gguf::GgufFile::open(path);
  const auto jinja = file.get<std::string_view>("tokenizer.chat_template");
  EXPECT_EQ(detect_chat_template(jinja), ChatTemplateKind::ChatML);
  EXPECT_EQ(chat_template_default_system(jinja), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

}  // namespace
}  // namespace hearth::engine
