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

from test_node_loss import Worker, key, serve, stream_body  # noqa: F401 (key is a fixture)

SCHEMA = {"type": "array", "minItems": 3, "maxItems": 4,
          "items": {"type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 20},
                                   "age": {"type": "integer", "minimum": 0, "maximum": 99}},
                    "required": ["name", "age"]}}


def constrained_stream(s, out, started=None):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "List three people with their ages."}],
            "max_tokens": 120, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}}
    stream_body(s, body, out, started)


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
        at_kill = len(got["times"])
        t.join()
        print(f"\nkilled {roles[victim.address]} after {at_kill} of {len(got['times'])} streamed pieces")
        assert at_kill < len(got["times"]) - 5, "the stream ended before the kill took effect"
        assert got["errors"] == [], got["errors"]
        assert got["text"] == want["text"], f"\n got: {got['text']!r}\nwant: {want['text']!r}"
        assert s.metric("hearth_recoveries_total") >= 1
    finally:
        if s:
            s.stop()
        for w in workers:
            w.stop()
