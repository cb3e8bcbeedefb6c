"""The prompt (prefix) cache through the API: turn 2 of a conversation reuses the KV cache of
turn 1 (usage.prompt_tokens_details.cached_tokens, as OpenAI reports it; /metrics counts it),
in one process and across a 2-stage pipeline alike, and greedy text is the same with and
without the cache (`--no-prefix-cache`)."""
import httpx
import pytest
from openai import OpenAI

from conftest import Server

SYSTEM = {"role": "system", "content": "You are a helpful assistant who answers in full sentences. " * 6}
TURN1 = [SYSTEM, {"role": "user", "content": "What is the tallest mountain on Earth?"}]


def conversation(s: Server):
    client = OpenAI(base_url=s.url + "/v1", api_key=s.api_key, max_retries=0, timeout=120)
    first = client.chat.completions.create(model="smollm2", messages=TURN1, max_tokens=24, temperature=0)
    turn2 = TURN1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And the second tallest?"}]
    second = client.chat.completions.create(model="smollm2", messages=turn2, max_tokens=24, temperature=0)
    streamed = list(client.chat.completions.create(model="smollm2", messages=turn2, max_tokens=24, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    return first, second, text, streamed[-1].usage


@pytest.mark.parametrize("stages", [0, 2])
def test_turn_two_reuses_the_cache_and_says_so_with_the_same_text(stages):
    cluster = ("--local-stages", str(stages)) if stages else ()
    cached = Server("--parallel", "2", "--ctx-size", "512", *cluster)
    try:
        first, second, streamed_text, streamed_usage = conversation(cached)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        # Everything of turn 1 the slot computed: its prompt and answer, up to where the
        # template's rendering of the assistant turn first differs from the generated tokens.
        reused = second.usage.prompt_tokens_details.cached_tokens
        assert reused >= first.usage.prompt_tokens, (reused, first.usage)
        assert reused < second.usage.prompt_tokens
        # The streamed repeat of turn 2 finds it again (its own slot holds turn 2 now).
        assert streamed_usage.prompt_tokens_details.cached_tokens >= reused
        assert streamed_text == second.choices[0].message.content
        assert cached.metric("hearth_prefix_cache_hits_total") >= 2
        assert cached.metric("hearth_prefix_cache_tokens_total") >= reused
    finally:
        cached.stop()
    plain = Server("--parallel", "2", "--ctx-size", "512", "--no-prefix-cache", *cluster)
    try:
        first_plain, second_plain, _, _ = conversation(plain)
        assert second_plain.usage.prompt_tokens_details.cached_tokens == 0
        assert plain.metric("hearth_prefix_cache_hits_total") == 0
    finally:
        plain.stop()
    assert first_plain.choices[0].message.content == first.choices[0].message.content
    assert second_plain.choices[0].message.content == second.choices[0].message.content


def test_usage_has_prompt_tokens_details_in_completions_too(server):
    r = httpx.post(server.url + "/v1/completions", headers=server.headers(), timeout=60,
                   json={"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
