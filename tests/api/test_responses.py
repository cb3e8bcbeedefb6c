"""OpenAI's Responses API (/v1/responses) through the official openai client: plain and streamed
(typed events in order, deltas adding up to the text), previous_response_id (the conversation
continues; the prompt cache reuses it), stored responses (GET, DELETE), tool calls and their
outputs as input items, structured output through text.format, and 400s that name the field."""
import json

import httpx
import openai
import pytest

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"]}}


def test_create_plain(client):
    r = client.responses.create(model="smollm2", input="Name a color.", instructions="Answer in one word.",
                                max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text.strip()
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Answer in one word."


def test_max_output_tokens_makes_incomplete(client):
    r = client.responses.create(model="smollm2", input="Tell me a long story about a dragon.", max_output_tokens=5,
                                temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


def test_streamed_events(client):
    plain = client.responses.create(model="smollm2", input="Say hello to Ada.", max_output_tokens=24, temperature=0)
    types, deltas, final = [], [], None
    with client.responses.create(model="smollm2", input="Say hello to Ada.", max_output_tokens=24, temperature=0,
                                 stream=True) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.index("response.output_item.added") < types.index("response.content_part.added") < \
        types.index("response.output_text.delta")
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert len(deltas) > 1, "the text streams token by token"
    assert "".join(deltas) == final.output_text == plain.output_text  # greedy: the same text either way
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_stream_helper_accumulates(client):
    # The SDK's helper wants a response.completed event (an incomplete response ends with
    # response.incomplete, as OpenAI's do): an answer that ends by itself.
    with client.responses.stream(model="smollm2", input="Name a color.", instructions="Answer in one word.",
                                 max_output_tokens=64, temperature=0) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text


def test_previous_response_id_continues(server, client):
    first = client.responses.create(model="smollm2", input="My name is Ada. Remember it.", max_output_tokens=16,
                                    temperature=0, instructions="You are brief.")
    second = client.responses.create(model="smollm2", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0, instructions="You are brief.")
    assert second.previous_response_id == first.id
    # The second prompt holds the first turn and its answer: more tokens, and the prefix cache
    # reuses what the first request left in its slot.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    # Stored responses can be read back and deleted.
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smollm2", input="x", previous_response_id=first.id, max_output_tokens=4)
    assert e.value.body["param"] == "previous_response_id"


def test_store_false_is_not_kept(client):
    r = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_tool_call_round_trip(client):
    r = client.responses.create(model="smollm2", input="What is the weather in Paris?", tools=[WEATHER],
                                tool_choice="required", parallel_tool_calls=False, max_output_tokens=80, temperature=0)
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1, r.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)
    # The call and its output go back as input items; the model answers in text.
    follow = client.responses.create(
        model="smollm2", tools=[WEATHER], tool_choice="none", max_output_tokens=30, temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}])
    assert follow.output[0].type == "message" and follow.output_text
    # The same through previous_response_id.
    chained = client.responses.create(
        model="smollm2", previous_response_id=r.id, tools=[WEATHER], tool_choice="none", max_output_tokens=30,
        temperature=0, input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}])
    assert chained.output_text == follow.output_text


def test_tool_call_streamed(client):
    events = []
    with client.responses.create(model="smollm2", input="Weather in Rome?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80,
                                 temperature=0, stream=True) as stream:
        for event in stream:
            events.append(event)
    types = [e.type for e in events]
    assert "response.function_call_arguments.done" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert isinstance(json.loads(done.arguments)["city"], str)
    final = events[-1].response
    assert final.output[-1].type == "function_call" and final.output[-1].name == "get_weather"


def test_structured_output(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.responses.create(model="smollm2", input="Make up a person.", max_output_tokens=60, temperature=0,
                                text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    value = json.loads(r.output_text)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)
    assert r.text.format.type == "json_schema"


def test_errors_name_the_field(server):
    def bad(body, status=400):
        r = httpx.post(server.url + "/v1/responses", headers=server.headers(), timeout=60,
                       json={"model": "smollm2", "input": "hi", "max_output_tokens": 4, **body})
        assert r.status_code == status, r.text
        return r.json()["error"]
    assert bad({"frobnicate": 1})["param"] == "frobnicate"
    assert bad({"tools": [{"type": "web_search"}]})["param"] == "tools[0].type"
    assert bad({"include": ["file_search_call.results"]})["param"] == "include"
    assert bad({"input": [{"type": "input_image", "image_url": "x"}]})["param"] == "input[0].type"
    assert bad({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]})["param"] == \
        "input[0].content[0].type"
    assert bad({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"not": {}}}}})["param"] == "text.format"
    assert bad({"max_output_tokens": 0})["param"] == "max_output_tokens"
    assert bad({"truncation": "auto"})["param"] == "truncation"
    assert bad({"temperature": 3})["param"] == "temperature"
    r = httpx.post(server.url + "/v1/responses", headers=server.headers(), timeout=60, json={"model": "smollm2"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
