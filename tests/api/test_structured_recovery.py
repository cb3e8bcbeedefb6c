"""Structured output survives a lost node: a JSON-schema-constrained stream through three
`hearth worker` processes, one killed mid-generation, ends with exactly the text of an
undisturbed run (valid for the schema). The grammar's state on the rebuilt last stage is derived
from the replayed tokens alone (engine/batch/batch.h), so nothing else has to travel."""
import json
import os
import signal
import threading

import httpx
import jsonschema

from test_node_loss import Worker, key, serve  # noqa: F401 (key is a fixture)

SCHEMA = {"type": "array", "minItems": 3, "maxItems": 4,
          "items": {"type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 20},
                                   "age": {"type": "integer", "minimum": 0, "maximum": 99}},
                    "required": ["name", "age"]}}


def constrained_stream(s, out, started=None):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "List three people with their ages."}],
            "max_tokens": 120, "temperature": 0, "stream": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}}
    text, errors, finish, n = "", [], None, 0
    out["pieces"] = []  # as they arrive (the test reads how far the stream was at the kill)
    with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, headers=s.headers(), timeout=180) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                errors.append(chunk["error"])
                continue
            for c in chunk.get("choices", []):
                piece = c.get("delta", {}).get("content") or ""
                if piece:
                    text += piece
                    out["pieces"].append(piece)
                    n += 1
                    if started is not None and n >= 6:
                        started.set()
                finish = c.get("finish_reason") or finish
    out.update(text=text, errors=errors, finish=finish)


def test_a_constrained_stream_survives_a_killed_worker(key):  # noqa: F811
    workers = [Worker(key, "220MiB") for _ in range(3)]
    s = None
    try:
        s = serve(workers, key, "--no-fallback-local")
        want = {}
        constrained_stream(s, want)
        assert want["errors"] == [] and want["finish"] == "stop", want
        jsonschema.validate(json.loads(want["text"]), SCHEMA)

        got, started = {}, threading.Event()
        t = threading.Thread(target=constrained_stream, args=(s, got, started))
        t.start()
        assert started.wait(120), "no tokens"
        roles = {n["address"]: n["role"] for n in httpx.get(s.url + "/health", timeout=10).json().get("nodes", [])}
        victim = next(w for w in workers if roles.get(w.address, "").startswith("stage 2"))
        os.kill(victim.proc.pid, signal.SIGKILL)  # the last stage: where the grammar lives
        at_kill = len(got["pieces"])
        t.join()
        print(f"\nkilled {roles[victim.address]} after {at_kill} of {len(got['pieces'])} streamed pieces")
        assert at_kill < len(got["pieces"]) - 5, "the stream ended before the kill took effect"
        assert got["errors"] == [], got["errors"]
        assert got["text"] == want["text"], f"\n got: {got['text']!r}\nwant: {want['text']!r}"
        assert s.metric("hearth_recoveries_total") >= 1
    finally:
        if s:
            s.stop()
        for w in workers:
            w.stop()
