#!/usr/bin/env python3
"""Time to first token of turn 2 of a long conversation against turn 1, with and without the
prompt cache: `hearth serve` is started twice on MODEL (`--no-prefix-cache` the second time);
turn 1 is a ~TOKENS-token prompt, turn 2 the same conversation with turn 1's answer and a short
new question. Prints TTFT (median of REPS conversations, each with a fresh system prompt so that
turn 1 never hits the cache), the ratio turn 2 / turn 1, and the cached tokens the server
reported.

    bench/prefix-cache.py MODEL.gguf [--tokens 1500] [--reps 3] [--threads N]

Needs httpx (the API tests' virtualenv has it: .venv-api/bin/python bench/prefix-cache.py ...).
HEARTH names the binary (default build/bin/hearth).
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
HEARTH = os.environ.get("HEARTH", str(ROOT / "build" / "bin" / "hearth"))
WORDS = ("river mountain quiet garden window market silver morning pattern letter harbor orange "
         "village engine lantern meadow thunder pencil kitchen candle forest mirror ladder winter").split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, threads, *extra):
    port = free_port()
    proc = subprocess.Popen([HEARTH, "serve", "-m", model, "--port", str(port), "--ctx-size", "4096", "--parallel", "2",
                             "--threads", str(threads), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("hearth serve did not start")


def ttft(url, messages):
    """Seconds to the first content chunk, the whole answer, and the usage."""
    body = {"messages": messages, "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    first, text, usage = None, "", None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                piece = c.get("delta", {}).get("content") or ""
                if piece and first is None:
                    first = time.monotonic() - t0
                text += piece
    return first, text, usage


def measure(url, tokens, reps, rng):
    t1s, t2s, cached = [], [], []
    for _ in range(reps):
        system = " ".join(rng.choice(WORDS) for _ in range(tokens))  # about one token a word
        turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "Summarize the text above."}]
        a, answer, u1 = ttft(url, turn1)
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Say it shorter."}]
        b, _, u2 = ttft(url, turn2)
        t1s.append(a)
        t2s.append(b)
        cached.append(u2["prompt_tokens_details"]["cached_tokens"])
        prompt = u2["prompt_tokens"]
    return statistics.median(t1s), statistics.median(t2s), statistics.median(cached), prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{Path(args.model).name}, {args.threads} threads, CPU {cpu}")
    print("| prompt cache | turn 1 TTFT | turn 2 TTFT | turn 2 / turn 1 | turn 2 prompt | cached |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, extra in (("on", ()), ("off (--no-prefix-cache)", ("--no-prefix-cache",))):
        proc, url = start(args.model, args.threads, *extra)
        try:
            t1, t2, cached, prompt = measure(url, args.tokens, args.reps, random.Random(1))
        finally:
            proc.terminate()
            proc.wait()
        print(f"| {label} | {t1 * 1000:.0f} ms | {t2 * 1000:.0f} ms | {t2 / t1:.1%} | {prompt} | {cached:.0f} |")


if __name__ == "__main__":
    main()
