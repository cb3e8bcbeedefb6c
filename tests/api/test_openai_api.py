"""hearth serve, driven by the official `openai` Python client and by raw HTTP.

A real server on the default model (SmolLM2-135M-Instruct Q4_1); see conftest.py.
"""
import concurrent.futures as futures
import json
import threading
import time

import httpx
import openai
import pytest

from conftest import Server

QUESTION = [{"role": "user", "content": "Name three colors of the rainbow."}]


def chat_text(client, messages=QUESTION, **kw):
    r = client.chat.completions.create(model="smollm2", messages=messages, **kw)
    return r


def stream_chat(client, messages=QUESTION, **kw):
    return list(client.chat.completions.create(model="smollm2", messages=messages, stream=True, **kw))


# --- the openai client ---------------------------------------------------------------------


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["smollm2"]
    assert models.data[0].object == "model"


def test_chat_completion(client):
    r = chat_text(client, max_tokens=24, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "smollm2"
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_non_stream_and_has_openai_shape(client):
    whole = chat_text(client, max_tokens=24, temperature=0)
    chunks = stream_chat(client, max_tokens=24, temperature=0, stream_options={"include_usage": True})
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_stream_without_usage_option_has_no_usage_chunk(client):
    chunks = stream_chat(client, max_tokens=4, temperature=0)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_stream_and_not(client):
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == 12


def test_max_tokens_gives_finish_reason_length(client):
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, extra_body={field: 3})
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 3


def test_stop_strings_never_appear_even_across_tokens(server, client):
    prompt = "1, 2, 3, 4, 5,"
    free = client.completions.create(model="smollm2", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    # A stop string that starts inside one token and ends inside the next one.
    toks = post(server, "/tokenize", {"content": free, "with_pieces": True}).json()["tokens"]
    pieces = [t["piece"] for t in toks]
    assert len(pieces) > 6
    start = sum(len(p) for p in pieces[:4])
    stop = free[start - 1:start + 2]  # last char of piece 4 + first two of piece 5
    cut = free.find(stop)
    assert cut >= 0
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == free[:cut]
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="smollm2", prompt=prompt, max_tokens=24, temperature=0, stop=stop,
                                            stream=True))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == free[:cut]
    assert stop not in streamed


def test_seed_reproducibility(client):
    kw = dict(max_tokens=16, temperature=1.0, top_p=1.0)
    a = chat_text(client, seed=42, **kw).choices[0].message.content
    b = chat_text(client, seed=42, **kw).choices[0].message.content
    assert a == b
    others = {chat_text(client, seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) >= 2  # different seeds are not all the same text


def test_logprobs_shape(client):
    r = chat_text(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        lps = [t.logprob for t in entry.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the best
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-6
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    c = client.completions.create(model="smollm2", prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) == 2 for t in lp.top_logprobs)


def test_n_choices(client):
    r = chat_text(client, max_tokens=8, temperature=1.0, seed=7, n=3, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in r.choices)
    assert r.usage.completion_tokens == 3 * 8
    assert len({c.message.content for c in r.choices}) >= 2  # each choice draws its own tokens


def test_wrong_or_missing_key_is_401(server):
    from openai import OpenAI

    for key in ("sk-wrong", ""):
        bad = OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0,
                     default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2)
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed


def test_prompt_longer_than_context_is_400(client):
    long = "word " * 2000
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": long}], max_tokens=2)
    assert e.value.status_code == 400
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in e.value.body["message"]


# --- raw HTTP ------------------------------------------------------------------------------


def post(server, path, body, raw=False, timeout=60):
    content = body if raw else json.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=timeout,
                      headers={**server.headers(), "Content-Type": "application/json"})


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize("body", ['{"messages": [', "not json", "", "[1, 2", '{"messages": [{"role": "user", "content": "hi"}]'])
def test_malformed_json_is_400(server, body):
    assert_openai_error(post(server, "/v1/chat/completions", body, raw=True), 400)


@pytest.mark.parametrize("body,param", [
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 3}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": "x"}, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, "top_logprobs"),
    ({"model": 3, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({}, "messages"),
])
def test_wrong_types_and_ranges_are_400_naming_the_field(server, body, param):
    assert_openai_error(post(server, "/v1/chat/completions", body), 400, param)


def test_completions_field_errors(server):
    assert_openai_error(post(server, "/v1/completions", {"prompt": {"a": 1}}), 400, "prompt")
    assert_openai_error(post(server, "/v1/completions", {"prompt": [999999999]}), 400, "prompt")
    assert_openai_error(post(server, "/v1/completions", {"max_tokens": 3}), 400, "prompt")


def test_huge_body_is_413(server):
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (20 << 20)}]})
    assert_openai_error(post(server, "/v1/chat/completions", big, raw=True), 413)


def test_unknown_route_is_404(server):
    r = httpx.get(server.url + "/v1/nothing-here", headers=server.headers())
    assert_openai_error(r, 404)
    r = httpx.post(server.url + "/v2/chat", headers=server.headers(), content="{}")
    assert_openai_error(r, 404)


def test_tokenize_detokenize_round_trip(server):
    text = "Hello, world! Ünïcödé 🙂"
    toks = post(server, "/tokenize", {"content": text}).json()["tokens"]
    assert all(isinstance(t, int) for t in toks) and toks
    assert post(server, "/detokenize", {"tokens": toks}).json()["content"] == text
    assert_openai_error(post(server, "/detokenize", {"tokens": [-1]}), 400, "tokens")
    assert_openai_error(post(server, "/tokenize", {"content": 5}), 400, "content")


def test_metrics_are_prometheus_text(server, client):
    chat_text(client, max_tokens=2, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in ("hearth_requests_running", "hearth_requests_waiting", "hearth_prompt_tokens_total",
                 "hearth_generation_tokens_total", "hearth_kv_cache_usage_ratio",
                 "hearth_time_to_first_token_seconds_bucket", "hearth_inter_token_latency_seconds_count",
                 "hearth_stage_busy_seconds_total"):
        assert name in text, name
    assert server.metric("hearth_generation_tokens_total") > 0


def test_server_is_still_healthy_after_bad_requests(server, client):
    assert server.alive()
    assert chat_text(client, max_tokens=2, temperature=0).choices[0].message.content


# --- batching, disconnects, overload --------------------------------------------------------

PROMPTS = ["Write a haiku about the sea.", "What is 12 times 12?", "List three fruits.", "Say hello in French.",
           "What color is the sky?", "Name a famous painter.", "How many legs does a spider have?",
           "What is the opposite of hot?"]


def test_eight_concurrent_streams_give_the_text_each_gives_alone(client):
    def run(p):
        chunks = stream_chat(client, messages=[{"role": "user", "content": p}], max_tokens=20, temperature=0)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    alone = [run(p) for p in PROMPTS]
    with futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, PROMPTS))
    assert together == alone


def test_disconnected_streams_free_their_slots_within_a_second(server):
    body = {"messages": QUESTION, "max_tokens": 400, "ignore_eos": True, "stream": True, "temperature": 0}
    streams = []
    for _ in range(8):
        c = httpx.Client(timeout=60)
        resp = c.send(c.build_request("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers()),
                      stream=True)
        assert resp.status_code == 200
        streams.append((c, resp, resp.iter_lines()))
    for _, _, lines in streams:  # every stream is generating
        got = 0
        for line in lines:
            if line.startswith("data: ") and '"content"' in line:
                got += 1
                if got >= 3:
                    break
    assert server.metric("hearth_requests_running") == 8
    for c, resp, _ in streams:
        resp.close()
        c.close()
    closed = time.time()
    while server.metric("hearth_requests_running") > 0:
        assert time.time() - closed < 1.0, "slots still held a second after the clients left"
        time.sleep(0.02)
    assert server.alive()


def test_overload_refuses_quickly_and_completes_the_admitted():
    s = Server("--parallel", "4", "--queue", "16", "--ctx-size", "256")
    try:
        statuses = []
        lock = threading.Lock()

        def one(i):
            t0 = time.time()
            r = httpx.post(s.url + "/v1/chat/completions", headers=s.headers(), timeout=300,
                           json={"messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 16,
                                 "ignore_eos": True, "temperature": 0})
            with lock:
                statuses.append((r.status_code, time.time() - t0, r.headers.get("Retry-After"), r.json()))

        def burst(n):
            statuses.clear()
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        burst(20)  # warm up: weights paged in, every slot and the queue used once
        assert all(x[0] == 200 for x in statuses), [x[0] for x in statuses]
        rss_before = s.rss_bytes()
        burst(100)
        ok = [x for x in statuses if x[0] == 200]
        refused = [x for x in statuses if x[0] in (429, 503)]
        assert len(ok) + len(refused) == 100, sorted({x[0] for x in statuses})
        assert len(ok) >= 20  # the 4 slots and the queue of 16 were used
        assert refused, "nothing was refused with 100 requests against 4 slots + a queue of 16"
        for status, seconds, retry_after, body in refused:
            assert retry_after is not None and int(retry_after) >= 1
            assert body["error"]["type"] and body["error"]["message"]
            assert seconds < 10  # refused quickly, not after waiting for a slot
        for _, _, _, body in ok:
            assert body["usage"]["completion_tokens"] == 16
        assert s.alive()
        assert s.rss_bytes() - rss_before < 32 << 20  # memory stays flat under overload
        assert s.metric("hearth_requests_refused_total") == len(refused)
    finally:
        s.stop()
