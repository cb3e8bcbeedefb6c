"""Tool calls through the official openai client with SmolLM2 (whose template has no tool
section: hearth's generic JSON convention): tool_choice "required" and a named function are
constrained by a grammar, so the call always parses — plain and streamed, and a round trip with
the tool's result sent back; legacy functions / function_call; 400s. Then the Hermes format on
a model whose template has tool sections (SmolLM2 with a Hermes/Qwen-style template written into
a copy of its GGUF: no small GGUF with such a template is on the registries this project uses;
the format is recognized from the template, as a Qwen 2.5 file's would be), and content
that streams token by token when tools are offered but the answer is text."""
import json

import httpx
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 30},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                                                        "required": ["city"]}}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(call, name="get_weather"):
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == name
    args = json.loads(call.function.arguments)
    assert isinstance(args.get("city"), str)
    return args


def streamed_calls(stream):
    """The calls of a streamed answer, put together from their delta.tool_calls fragments as
    OpenAI's clients do (by index), and the finish reason."""
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    return calls, finish


def test_required_round_trip(client):
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[WEATHER, TIME],
                                       tool_choice="required", temperature=0, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    check_call(call, call.function.name)
    # The result goes back as a `tool` message; the model then answers in text.
    messages = MESSAGES + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21, "sky": "clear"}'}]
    r2 = client.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER, TIME],
                                        tool_choice="none", temperature=0, max_tokens=40)
    assert r2.choices[0].message.content
    assert r2.choices[0].finish_reason in ("stop", "length")


def test_named_function_streamed(client):
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[WEATHER, TIME],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            temperature=0, max_tokens=100, stream=True)
    calls, finish = streamed_calls(stream)
    assert finish == "tool_calls"
    assert calls and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)


def test_parallel_tool_calls_false_gives_one_call(client):
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[WEATHER, TIME],
                                       tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=100)
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(r.choices[0].message.tool_calls) == 1


def test_legacy_functions(server):
    r = httpx.post(server.url + "/v1/chat/completions", headers=server.headers(), timeout=120, json={
        "model": "smollm2", "messages": MESSAGES, "temperature": 0, "max_tokens": 100,
        "functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "function_call", choice
    assert choice["message"]["function_call"]["name"] == "get_weather"
    json.loads(choice["message"]["function_call"]["arguments"])


def test_tool_errors_are_400(server, client):
    def bad(body):
        r = httpx.post(server.url + "/v1/chat/completions", headers=server.headers(), timeout=60,
                       json={"messages": MESSAGES, "max_tokens": 4, **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]
    assert bad({"tool_choice": "auto"})["param"] == "tool_choice"
    assert bad({"parallel_tool_calls": True})["param"] == "parallel_tool_calls"
    assert bad({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}})["param"] == "tool_choice"
    assert bad({"tools": [{"type": "retrieval"}]})["param"] == "tools[0].type"
    assert bad({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}})["param"] == "tool_choice"
    err = bad({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
               "tool_choice": "required"})
    assert err["param"] == "tools" and "'not'" in err["message"], err
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=[{"role": "tool", "content": "x"}], max_tokens=4)


def test_auto_text_answer_streams_token_by_token(client):
    # With tools offered and tool_choice auto, an answer that does not start like a call streams
    # as it is generated (not held to the end).
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello to Ada."}],
                                            tools=[WEATHER], temperature=0, max_tokens=24, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    whole = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello to Ada."}],
                                           tools=[WEATHER], temperature=0, max_tokens=24)
    assert whole.choices[0].message.content and not whole.choices[0].message.tool_calls
    assert len(pieces) > 3, pieces
    assert "".join(pieces) == whole.choices[0].message.content


# A ChatML template with Hermes tool sections, in the shape Qwen 2.5's has (written for this test:
# hearth recognizes the format by its <tool_call> markers and renders it itself).
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{%- endif %}
{%- for message in messages %}{%- if message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{%- elif message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{%- endfor %}<|im_end|>
{%- else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def hermes(request, tmp_path_factory):
    from conftest import MODEL, Server  # noqa: E402
    from gguf_template import with_chat_template
    from openai import OpenAI

    if not MODEL.exists():
        pytest.skip(f"model {MODEL} not fetched")
    model = tmp_path_factory.mktemp("hermes") / "smollm2-hermes-template.gguf"
    with_chat_template(MODEL, model, HERMES_TEMPLATE)
    s = Server("--parallel", "2", "--ctx-size", "1024", model=model)  # no --tool-format: from the template
    request.addfinalizer(s.stop)
    assert "tool calls in the hermes format (from the chat template)" in s.output(), s.output()
    return s, OpenAI(base_url=s.url + "/v1", api_key=s.api_key, max_retries=0, timeout=300)


def test_hermes_format_round_trip(hermes):
    # Qwen 2.5 / Hermes format (what a template with <tool_call> gets by itself): the model writes
    # <tool_call>{...}</tool_call>, forced here by the grammar; results go back as <tool_response>.
    _, client = hermes
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required",
                                       parallel_tool_calls=False, temperature=0, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
    call = choice.message.tool_calls[0]
    check_call(call, call.function.name)
    messages = MESSAGES + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}]
    r2 = client.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                        temperature=0, max_tokens=30)
    assert r2.choices[0].message.content


def test_hermes_format_streamed(hermes):
    _, client = hermes
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=[WEATHER],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            temperature=0, max_tokens=200, stream=True)
    calls, finish = streamed_calls(stream)
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)
