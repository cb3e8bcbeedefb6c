"""Every request field is honoured, accepted without effect, or refused with a 400 naming it
(docs/API.md has the table): logit_bias through the official openai client, the refusals and
the unknown fields through raw HTTP, and GET /v1/models/{id}.

Uses the session server of conftest.py (SmolLM2, greedy where the text is compared).
"""
import json

import httpx
import openai
import pytest

QUESTION = [{"role": "user", "content": "Name three colors of the rainbow."}]


def post(server, path, body, timeout=60):
    return httpx.post(server.url + path, content=json.dumps(body), timeout=timeout,
                      headers={**server.headers(), "Content-Type": "application/json"})


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def token_id(server, piece: str) -> int:
    """The id of the token whose text is exactly `piece` (it must tokenize to one token)."""
    toks = post(server, "/tokenize", {"content": piece, "with_pieces": True}).json()["tokens"]
    assert len(toks) == 1 and toks[0]["piece"] == piece, toks
    return toks[0]["id"]


def chat_tokens(client, **kw) -> list[str]:
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, logprobs=True, **kw)
    return [t.token for t in r.choices[0].logprobs.content]


# --- logit_bias ------------------------------------------------------------------------------


def test_logit_bias_ban_of_the_greedy_first_token_changes_the_output(server, client):
    free = chat_tokens(client, max_tokens=12, temperature=0)
    first = free[0]
    banned = token_id(server, first)
    biased = chat_tokens(client, max_tokens=12, temperature=0, logit_bias={str(banned): -100})
    assert biased != free
    assert biased[0] != first
    assert first not in biased, (first, biased)
    # Sampled (not greedy), several choices, streamed: the banned token still never appears.
    for choice in client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=1.5,
                                                 top_p=1.0, seed=11, n=4, logprobs=True,
                                                 logit_bias={str(banned): -100}).choices:
        assert first not in [t.token for t in choice.logprobs.content]
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0,
                                           logit_bias={str(banned): -100})
    streamed = list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0,
                                                   logit_bias={str(banned): -100}, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.choices[0].message.content


def test_logit_bias_plus_100_forces_a_token(server, client):
    forced = token_id(server, " purple")
    tokens = chat_tokens(client, max_tokens=6, temperature=0.7, seed=3, logit_bias={str(forced): 100})
    assert tokens == [" purple"] * 6
    r = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0,
                                  logit_bias={str(forced): 100})
    assert r.choices[0].text == " purple" * 4
    # A bias that does not dominate leaves the text as it was: the bias is added, not a switch.
    free = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0)
    tiny = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0,
                                     logit_bias={str(forced): 0.001})
    assert tiny.choices[0].text == free.choices[0].text


@pytest.mark.parametrize("bias", [
    {"abc": 5},
    {"-1": 5},
    {"1.5": 5},
    {"": 5},
    {"12": 101},
    {"12": -100.5},
    {"12": "ban"},
    {"12": None},
    {"999999999": 1},        # outside the vocabulary
    {"99999999999": 1},      # not even an int32
    {str(i): 1 for i in range(1025)},
    ["12", 5],
    "12",
])
def test_bad_logit_bias_is_400(server, bias):
    assert_openai_error(post(server, "/v1/chat/completions", {"messages": QUESTION, "logit_bias": bias}), 400, "logit_bias")
    assert_openai_error(post(server, "/v1/completions", {"prompt": "hi", "logit_bias": bias}), 400, "logit_bias")


def test_bad_logit_bias_through_the_client_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2, logit_bias={"not-a-token": 5})
    assert e.value.status_code == 400
    assert e.value.body["param"] == "logit_bias"


def test_many_logit_biases_within_the_bound_are_fine(client):
    bias = {str(i): -1 for i in range(1000, 2024)}  # 1024: the documented bound
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2, temperature=0, logit_bias=bias)
    assert r.choices[0].message.content is not None


# --- fields refused, fields accepted without effect -------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("extra,param", [
    ({"functions": [{"name": "not a name!"}]}, "functions[0].name"),
    ({"function_call": "auto"}, "function_call"),          # without functions
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"tool_choice": "auto"}, "tool_choice"),              # without tools
    ({"tool_choice": "none"}, "tool_choice"),
    ({"tool_choice": "none", "tools": []}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),  # no name
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"grammar": "root ::= undefined"}, "grammar"),
    ({"grammar": "root ::= \"a\"", "json_schema": {"type": "string"}}, "json_schema"),  # two constraints
    ({"json_schema": {"type": "object", "uniqueItems": True}}, "json_schema"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"frobnicate": None}, "frobnicate"),
    ({"repeat_last_n": 32}, "repeat_last_n"),     # a llama.cpp extension hearth does not take
    ({"prompt": "hi"}, "prompt"),                 # a completions field
    ({"stream": True, "stream_options": {"include_usage": True, "shout": True}}, "stream_options.shout"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"user": 5}, "user"),
    ({"store": "yes"}, "store"),
])
def test_chat_fields_refused_with_a_400_naming_them(server, extra, param):
    err = assert_openai_error(post(server, "/v1/chat/completions", {"messages": QUESTION, **extra}), 400, param)
    assert param.split(".")[-1] in err["message"] or param in ("tools", "response_format", "modalities", "metadata",
                                                               "json_schema")


@pytest.mark.parametrize("extra,param", [
    ({"messages": QUESTION}, "messages"),
    ({"tools": [TOOL]}, "tools"),
    ({"tools": []}, "tools"),                     # a chat field, even empty
    ({"functions": None}, "functions"),
    ({"logit_biases": {}}, "logit_biases"),
    ({"store": True}, "store"),
    ({"grammar": "root ::= ("}, "grammar"),
    ({"suffix": "end"}, "suffix"),
    ({"echo": True}, "echo"),
    ({"repeat_penalty": 0}, "repeat_penalty"),    # the sampler needs > 0 (1 is off)
])
def test_completions_fields_refused_with_a_400_naming_them(server, extra, param):
    assert_openai_error(post(server, "/v1/completions", {"prompt": "hi", **extra}), 400, param)


def test_fields_without_effect_are_accepted_and_change_nothing(client):
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=0)
    r = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=8, temperature=0, user="someone", store=False,
        metadata={"app": "test"}, service_tier="auto", safety_identifier="abc", prompt_cache_key="k",
        prediction={"type": "content", "content": "Red"}, modalities=["text"], response_format={"type": "text"},
        extra_body={"tools": [], "tool_choice": None, "functions": None})
    assert r.choices[0].message.content == plain.choices[0].message.content
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=0,
                                                 stream=True,
                                                 stream_options={"include_usage": True, "include_obfuscation": False}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    c = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0, user="someone",
                                  echo=False, best_of=1, n=1, extra_body={"grammar": None, "json_schema": None})
    assert c.choices[0].text


# --- GET /v1/models/{id} -----------------------------------------------------------------------


def test_models_retrieve_answers_the_served_model(client):
    m = client.models.retrieve("smollm2")
    assert m.id == "smollm2" and m.object == "model" and m.owned_by == "hearth"
    assert isinstance(m.created, int) and m.created > 0
    listed = client.models.list().data[0]
    assert (listed.id, listed.created, listed.owned_by) == (m.id, m.created, m.owned_by)


def test_models_retrieve_of_another_id_is_404(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.status_code == 404
    r = httpx.get(server.url + "/v1/models/gpt-4o", headers=server.headers())
    err = assert_openai_error(r, 404, "model")
    assert err["code"] == "model_not_found"
    assert_openai_error(httpx.get(server.url + "/v1/models/smollm2/extra", headers=server.headers()), 404)
    assert httpx.get(server.url + "/v1/models/smollm2").status_code == 401  # the key is still needed


# --- logit_bias through a pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_server():
    from conftest import Server

    s = Server("--parallel", "2", "--ctx-size", "256", "--local-stages", "2")
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.output()


def test_logit_bias_travels_to_the_last_stage_of_a_pipeline(server, client, pipeline_server):
    """Sampling runs on the pipeline's last stage: the bias must reach it inside the Batch message."""
    from openai import OpenAI

    with OpenAI(base_url=pipeline_server.url + "/v1", api_key=pipeline_server.api_key, max_retries=0,
                timeout=300) as remote:
        free = chat_tokens(remote, max_tokens=8, temperature=0)
        banned = token_id(server, free[0])
        forced = token_id(server, " purple")
        for bias in ({str(banned): -100}, {str(forced): 100}):
            there = chat_tokens(remote, max_tokens=8, temperature=0, logit_bias=bias)
            here = chat_tokens(client, max_tokens=8, temperature=0, logit_bias=bias)
            assert there == here, bias
        assert free[0] not in chat_tokens(remote, max_tokens=8, temperature=0, logit_bias={str(banned): -100})
        assert chat_tokens(remote, max_tokens=3, temperature=0, logit_bias={str(forced): 100}) == [" purple"] * 3
