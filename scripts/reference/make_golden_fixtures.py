#!/usr/bin/env python3
"""Write tests/fixtures/golden/<model>.json: llama.cpp's logits and greedy tokens for a set of
plain and chat prompts, the oracle of hearth's whole-model tests (tests/engine/test_golden.cpp).

Usage:  python3 scripts/reference/make_golden_fixtures.py [--kv f16|q8_0] [MODELS_DIR]
Needs:  pip install llama-cpp-python jinja2 (builds llama.cpp from source: slow, do it once),
        and the models fetched by scripts/get-model.sh.

Per prompt the fixture holds the exact text (chat prompts: rendered by the model's own Jinja
template, or llama.cpp's built-in Gemma template when the file has none), the token ids
llama.cpp feeds (parse_special on; add_special on unless the text already starts with BOS), for every prompt position the TOP_K best
token ids with their logits, the first N_GREEDY tokens of greedy generation with llama.cpp's
margin between its two best logits at each step, and llama.cpp's own noise floor per position
(`self_nmse`: the larger deviation of llama.cpp from itself when the prompt is evaluated token by
token instead of in one batch, or with an f32 instead of an f16 KV cache).

--kv q8_0 writes <model>-kv-q8_0.json instead: llama.cpp with q8_0 K and V caches (which it
allows only with flash attention), the oracle of hearth's q8_0 KV cache. Its noise floor is
the larger deviation of that configuration when evaluated token by token, or with an f16 cache.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/golden"
TOP_K = 20
N_GREEDY = 48

GGML_TYPE_F32, GGML_TYPE_Q8_0 = 0, 8
# Llama(...) arguments of each KV cache configuration, and the two variants its noise floor
# compares it with.
KV_CONFIGS = {
    "f16": dict(config={}, noise=[dict(n_batch=1, n_ubatch=1), dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)]),
    "q8_0": dict(config=dict(type_k=GGML_TYPE_Q8_0, type_v=GGML_TYPE_Q8_0, flash_attn=True),
                 noise=[dict(n_batch=1, n_ubatch=1, type_k=GGML_TYPE_Q8_0, type_v=GGML_TYPE_Q8_0, flash_attn=True),
                        dict()]),
}

MODELS_TO_RUN = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
}

PLAIN = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 5, 8, 13, 21,",
    "Les chats et les chiens sont",
]
CHATS = [
    [{"role": "user", "content": "What is the boiling point of water at sea level?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish."},
     {"role": "assistant", "content": "Buenos días."},
     {"role": "user", "content": "And into German?"}],
    [{"role": "user", "content": "Write a haiku about the moon."}],
]

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set first = '' %}{% endif %}"
    "{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def chat_text(llm, messages):
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template") or GEMMA_TEMPLATE
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
    eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
    formatter = Jinja2ChatFormatter(template=template, bos_token=bos, eos_token=eos, add_generation_prompt=True)
    return formatter(messages=messages).prompt


def run(llm, text):
    # A chat template that writes BOS itself gets no second one from the tokenizer.
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else None
    add_bos = not (bos and text.startswith(bos))
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
    llm.reset()
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    top_ids, top_logits = [], []
    for row in scores:
        ids = np.argsort(-row, kind="stable")[:TOP_K]
        top_ids.append([int(i) for i in ids])
        top_logits.append([round(float(row[i]), 5) for i in ids])
    greedy, margins = [], []
    last = scores[-1]
    for _ in range(N_GREEDY):
        best2 = np.sort(last)[-2:]
        tok = int(np.argmax(last))
        greedy.append(tok)
        margins.append(round(float(best2[1] - best2[0]), 5))  # how far this choice was from a tie
        llm.eval([tok])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return tokens, top_ids, top_logits, greedy, margins


def self_noise(path, prompts, variants):
    """llama.cpp against itself, per prompt position: NMSE over the same top-K ids between the
    fixture's logits and each variant's, e.g. (a) the prompt evaluated one token at a time
    (n_batch=1: other kernels, other summation order), (b) the prompt evaluated with an f32
    instead of an f16 KV cache. The largest is llama.cpp's own sensitivity at that position: the
    noise floor any implementation that is not bit-identical to it must be judged against."""
    worst = [[0.0] * len(p["tokens"]) for p in prompts]
    for kwargs in variants:
        kwargs = {"n_batch": 512, **kwargs}
        llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, seed=0, verbose=False, **kwargs)
        for p, w in zip(prompts, worst):
            llm.reset()
            llm.eval(p["tokens"])
            scores = np.array(llm.scores[: len(p["tokens"])], dtype=np.float32)
            for i, (row, ids, ref) in enumerate(zip(scores, p["top_ids"], p["top_logits"])):
                ref = np.array(ref, dtype=np.float64)
                other = row[ids].astype(np.float64)
                w[i] = max(w[i], float(((other - ref) ** 2).sum() / (ref ** 2).sum()))
        del llm
    for p, w in zip(prompts, worst):
        p["self_nmse"] = [float(f"{v:.3g}") for v in w]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kv", choices=sorted(KV_CONFIGS), default="f16", help="KV cache type of llama.cpp")
    parser.add_argument("models", nargs="?", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    kv = KV_CONFIGS[args.kv]
    suffix = "" if args.kv == "f16" else f"-kv-{args.kv}"
    OUT.mkdir(parents=True, exist_ok=True)
    for name, file in MODELS_TO_RUN.items():
        path = args.models / file
        if not path.exists():
            sys.exit(f"{path} is missing: run scripts/get-model.sh {name}")
        llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2, seed=0,
                    verbose=False, **kv["config"])
        prompts = []
        for text in PLAIN:
            prompts.append({"kind": "plain", "text": text})
        for messages in CHATS:
            prompts.append({"kind": "chat", "messages": messages, "text": chat_text(llm, messages)})
        for p in prompts:
            tokens, top_ids, top_logits, greedy, margins = run(llm, p["text"])
            p.update({"tokens": tokens, "top_ids": top_ids, "top_logits": top_logits, "greedy": greedy,
                      "greedy_margin": margins})
            print(f"{name}: {len(tokens)} prompt tokens, greedy: {llm.detokenize(greedy)[:60]!r}")
        del llm
        self_noise(path, prompts, kv["noise"])
        fixture = {"model": name, "file": file, "kv_type": args.kv, "top_k": TOP_K, "n_greedy": N_GREEDY,
                   "llama_cpp_python": __import__("llama_cpp").__version__, "prompts": prompts}
        out = OUT / f"{name}{suffix}.json"
        out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
