"""Anthropic's Messages API (/v1/messages) through the official anthropic client: plain and
streamed (the event sequence, text deltas adding up), stop sequences reported as such, tool use
with tool_choice "any" (a grammar makes the call parse) and the tool_result round trip, the
x-api-key header, and errors in Anthropic's shape naming the field."""
import json

import httpx
import pytest

anthropic = pytest.importorskip("anthropic")

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                            "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Anthropic's current API (and client) has no temperature; hearth still takes it, for older
# clients and for deterministic tests.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=300)


def test_plain(claude):
    m = claude.messages.create(model="smollm2", max_tokens=12, system="Answer briefly.",
                               messages=[{"role": "user", "content": "Name a fruit."}], extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 0 < m.usage.output_tokens <= 12 and m.usage.input_tokens > 0


def test_max_tokens_and_stop_sequence(claude):
    m = claude.messages.create(model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "Tell a long story."}],
                               extra_body=GREEDY)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    free = claude.messages.create(model="smollm2", max_tokens=30, messages=[{"role": "user", "content": "Count from 1 to 9."}],
                                  extra_body=GREEDY)
    words = free.content[0].text.split()
    assert len(words) > 2
    stop = words[1]
    cut = claude.messages.create(model="smollm2", max_tokens=30, messages=[{"role": "user", "content": "Count from 1 to 9."}],
                                 extra_body=GREEDY, stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert stop not in cut.content[0].text


def test_streamed(claude):
    whole = claude.messages.create(model="smollm2", max_tokens=20, messages=[{"role": "user", "content": "Say hello."}],
                                   extra_body=GREEDY)
    types, text = [], ""
    with claude.messages.stream(model="smollm2", max_tokens=20, messages=[{"role": "user", "content": "Say hello."}],
                                extra_body=GREEDY) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert types[0] == "message_start" and "content_block_start" in types and types[-1] == "message_stop"
    assert types.count("content_block_delta") > 1
    assert text == final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason


def test_structured_output(claude):
    schema = {"type": "object", "properties": {"fruit": {"type": "string", "maxLength": 20}, "count": {"type": "integer"}},
              "required": ["fruit", "count"], "additionalProperties": False}
    m = claude.messages.create(model="smollm2", max_tokens=60, messages=[{"role": "user", "content": "Pick a fruit and a count."}],
                               output_config={"format": {"type": "json_schema", "schema": schema}}, extra_body=GREEDY)
    value = json.loads(m.content[0].text)
    assert isinstance(value["fruit"], str) and isinstance(value["count"], int)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="smollm2", max_tokens=8, messages=ASK, output_config={"effort": "high"})


def test_tool_use_round_trip(claude):
    m = claude.messages.create(model="smollm2", max_tokens=80, messages=ASK, tools=[WEATHER],
                               tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    assert isinstance(uses[0].input["city"], str)
    follow = claude.messages.create(
        model="smollm2", max_tokens=30, tools=[WEATHER], extra_body=GREEDY,
        tool_choice={"type": "none"},
        messages=ASK + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "21 C, clear"}]}])
    assert follow.content[0].type == "text" and follow.content[0].text
    assert follow.stop_reason in ("end_turn", "max_tokens")


def test_tool_use_streamed(claude):
    with claude.messages.stream(model="smollm2", max_tokens=80, messages=ASK, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input["city"], str)


def test_errors_are_anthropic_shaped(server, claude):
    r = httpx.post(server.url + "/v1/messages", headers={"x-api-key": server.api_key}, timeout=60,
                   json={"model": "smollm2", "messages": ASK})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="smollm2", max_tokens=8, messages=ASK, extra_body={"temperature": 1.5})
    assert "temperature" in str(e.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="smollm2", max_tokens=8,
                               messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model="smollm2", max_tokens=8, messages=ASK)
