"""`hearth run` and `hearth serve` share one generation loop (the scheduler): the same prompt,
sampler settings and seed give the same text from the command line and from the API.

Sampling is on (temperature 0.8, top-k 40), so the text depends on every sampler setting and on
the seed: every setting (top-p, min-p, the penalties, the context) is passed explicitly and equal
on both sides, and a different seed must change the text (the comparison is not vacuous). Uses
the session server of conftest.py (8 slots, context 512) through a client of its own.
"""
import subprocess

import pytest
from openai import OpenAI

from conftest import BIN, MODEL

N_TOKENS = 24
SEED = 4242
COMPLETION_PROMPT = "Once upon a time, in a small village by the sea, there lived"
CHAT_PROMPT = "Write a short poem about the sea."

# Sampler settings, named as `hearth run` takes them and as the API body carries them. Both
# sides default to temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties (and a
# penalty window of 64 tokens, not settable); the values other than the required temperature
# and top-k differ from those defaults, so a setting that one side drops changes the text.
SAMPLING = {
    "temp": ("temperature", 0.8),
    "top-k": ("top_k", 40),
    "top-p": ("top_p", 0.9),
    "min-p": ("min_p", 0.02),
    "repeat-penalty": ("repeat_penalty", 1.1),
    "presence-penalty": ("presence_penalty", 0.3),
    "frequency-penalty": ("frequency_penalty", 0.2),
}


def run_text(prompt: str, seed: int, *extra: str) -> str:
    """What `hearth run` prints on stdout, without the newline it ends with."""
    args = [str(BIN), "run", "-m", str(MODEL), "-p", prompt, "-n", str(N_TOKENS), "--seed", str(seed),
            "--ctx-size", "512", *extra]
    for flag, (_, value) in SAMPLING.items():
        args += [f"--{flag}", str(value)]
    done = subprocess.run(args, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = done.stdout.decode("utf-8")
    assert out.endswith("\n"), repr(out)
    return out[:-1]


def api_sampling(seed: int) -> dict:
    body = {name: value for name, value in SAMPLING.values()}
    standard = {k: body.pop(k) for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")}
    return {**standard, "seed": seed, "max_tokens": N_TOKENS, "extra_body": body}


@pytest.fixture(scope="module")
def api(server):
    # Its own client, closed at the end (the server no longer waits for idle keep-alive
    # connections when it stops, but a test should not leave them open).
    with OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300) as c:
        yield c


def test_run_and_serve_complete_a_prompt_with_the_same_text(api):
    r = api.completions.create(model="smollm2", prompt=COMPLETION_PROMPT, **api_sampling(SEED))
    served = r.choices[0].text
    assert r.usage.completion_tokens == N_TOKENS or r.choices[0].finish_reason == "stop"
    assert served.strip(), served
    assert run_text(COMPLETION_PROMPT, SEED) == served

    # Not vacuous: another seed gives other text, from `run` as from the server.
    other = run_text(COMPLETION_PROMPT, SEED + 1)
    assert other != served
    r2 = api.completions.create(model="smollm2", prompt=COMPLETION_PROMPT, **api_sampling(SEED + 1))
    assert r2.choices[0].text == other


def test_run_chat_and_serve_chat_give_the_same_text(api):
    r = api.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": CHAT_PROMPT}],
                                       **api_sampling(SEED))
    served = r.choices[0].message.content
    assert served.strip(), served
    assert run_text(CHAT_PROMPT, SEED, "--chat") == served
    assert run_text(CHAT_PROMPT, SEED + 1, "--chat") != served
