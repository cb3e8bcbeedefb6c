"""Structured output by constrained decoding, through the official openai client: 20 JSON schemas
of increasing difficulty, each answer parsed with json and validated with jsonschema (every one
valid), in one process and through a 2-stage pipeline; json_object; llama.cpp's GBNF `grammar`
and top-level `json_schema`; 400s for unsupported keywords and conflicting constraints.

Greedy decoding and bounded schemas keep it short; requests run concurrently (--parallel)."""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

NAME = {"type": "string", "minLength": 1, "maxLength": 24}

# (prompt, schema), simplest first.
SCHEMAS = [
    ("Name a color.", {"type": "string", "maxLength": 20}),
    ("Pick a number from 1 to 10.", {"type": "integer", "minimum": 1, "maximum": 10}),
    ("Is the sky blue? Answer true or false.", {"type": "boolean"}),
    ("Which color is grass?", {"enum": ["red", "green", "blue"]}),
    ("Give the name of a famous scientist.",
     {"type": "object", "properties": {"name": NAME}, "required": ["name"], "additionalProperties": False}),
    ("Describe a person with a name and an age.",
     {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
      "required": ["name", "age"]}),
    ("Describe a book.",
     {"type": "object",
      "properties": {"title": NAME, "author": NAME, "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
                     "isbn": {"type": "string", "maxLength": 20}},
      "required": ["title", "year"]}),
    ("What is the temperature in Paris today?",
     {"type": "object",
      "properties": {"city": NAME, "celsius": {"type": "number", "minimum": -50, "maximum": 60}},
      "required": ["city", "celsius"]}),
    ("List three fruits.",
     {"type": "array", "items": {"type": "string", "maxLength": 15}, "minItems": 2, "maxItems": 4}),
    ("List some prime numbers.",
     {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}, "minItems": 1, "maxItems": 5}),
    ("Describe a person and where they live.",
     {"type": "object",
      "properties": {"name": NAME,
                     "address": {"type": "object",
                                 "properties": {"street": NAME, "city": NAME, "country": NAME},
                                 "required": ["city", "country"]}},
      "required": ["name", "address"]}),
    ("Describe a task and its status.",
     {"type": "object",
      "properties": {"kind": {"const": "task"}, "title": NAME,
                     "status": {"enum": ["todo", "doing", "done"]},
                     "priority": {"enum": [1, 2, 3]}},
      "required": ["kind", "title", "status", "priority"]}),
    ("List two employees with their roles.",
     {"type": "array", "maxItems": 3, "minItems": 1,
      "items": {"type": "object", "properties": {"name": NAME, "role": NAME}, "required": ["name", "role"]}}),
    ("What is the middle name of Albert Einstein, if any?",
     {"type": "object", "properties": {"middle_name": {"anyOf": [{"type": "null"}, NAME]}},
      "required": ["middle_name"]}),
    ("Describe a shape.",
     {"oneOf": [
         {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "integer", "minimum": 1, "maximum": 100}},
          "required": ["kind", "radius"]},
         {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 100}},
          "required": ["kind", "side"]}]}),
    ("Give a point on a map and its label.",
     {"$defs": {"coordinate": {"type": "number", "minimum": -180, "maximum": 180}},
      "type": "object",
      "properties": {"label": NAME, "lat": {"$ref": "#/$defs/coordinate"}, "lon": {"$ref": "#/$defs/coordinate"}},
      "required": ["label", "lat", "lon"]}),
    ("Give a US address with a zip code and a date.",
     {"type": "object",
      "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                     "date": {"type": "string", "format": "date"},
                     "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{2,3}$"}},
      "required": ["zip", "date", "code"]}),
    ("Give a small matrix and an optional note.",
     {"type": "object",
      "properties": {"rows": {"type": "array", "maxItems": 3, "minItems": 1,
                              "items": {"type": "array", "minItems": 1, "maxItems": 3,
                                        "items": {"type": "integer", "minimum": -9, "maximum": 9}}},
                     "note": {"type": ["string", "null"], "maxLength": 20}},
      "required": ["rows", "note"]}),
    ("Describe a directory tree.",
     {"definitions": {"entry": {"type": "object",
                                "properties": {"name": NAME, "size": {"type": "integer", "minimum": 0, "maximum": 99999}},
                                "required": ["name", "size"]}},
      "type": "object",
      "properties": {"root": NAME, "files": {"type": "array", "items": {"$ref": "#/definitions/entry"}, "maxItems": 3}},
      "required": ["root", "files"]}),
    ("Describe a product for an online shop.",
     {"$defs": {"money": {"type": "object",
                          "properties": {"amount": {"type": "integer", "minimum": 0, "maximum": 100000},
                                         "currency": {"enum": ["USD", "EUR", "GBP"]}},
                          "required": ["amount", "currency"], "additionalProperties": False},
                "tag": {"type": "string", "pattern": "^[a-z]{2,10}$"}},
      "type": "object",
      "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                     "name": NAME,
                     "price": {"$ref": "#/$defs/money"},
                     "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1, "maxItems": 3},
                     "stock": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 500}, {"type": "null"}]},
                     "variant": {"oneOf": [{"type": "object", "properties": {"size": {"enum": ["S", "M", "L"]}},
                                            "required": ["size"], "additionalProperties": False},
                                           {"type": "null"}]}},
      "required": ["sku", "name", "price", "tags", "stock", "variant"], "additionalProperties": False}),
]

MAX_TOKENS = 160


def ask(client, prompt, schema, i):
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "system", "content": "You answer with JSON only."},
                  {"role": "user", "content": prompt}],
        temperature=0, max_tokens=MAX_TOKENS,
        response_format={"type": "json_schema",
                         "json_schema": {"name": f"schema_{i}", "schema": schema, "strict": True}})
    return r.choices[0]


def check_all_schemas(client):
    with ThreadPoolExecutor(max_workers=8) as pool:
        choices = list(pool.map(lambda a: ask(client, *a), [(p, s, i) for i, (p, s) in enumerate(SCHEMAS)]))
    failures = []
    for i, ((prompt, schema), choice) in enumerate(zip(SCHEMAS, choices)):
        text = choice.message.content
        try:
            assert choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}"
            jsonschema.validate(json.loads(text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append(f"schema {i} ({prompt}): {e}: {text!r}")
    assert not failures, "\n".join(failures)


def test_twenty_schemas_all_valid(client):
    check_all_schemas(client)


def test_twenty_schemas_through_a_two_stage_pipeline():
    from conftest import Server
    from openai import OpenAI

    s = Server("--parallel", "8", "--ctx-size", "512", "--local-stages", "2")
    try:
        client = OpenAI(base_url=s.url + "/v1", api_key=s.api_key, max_retries=0, timeout=300)
        check_all_schemas(client)
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.output()


def test_json_object(client):
    r = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Give a JSON object with the keys name and city for a person."}],
        response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streamed(client):
    schema = SCHEMAS[5][1]
    stream = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=MAX_TOKENS, stream=True,
        messages=[{"role": "user", "content": SCHEMAS[5][0]}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_gbnf_grammar_on_both_endpoints(server, client):
    grammar = 'root ::= answer "."\nanswer ::= "yes" | "no" | "maybe"'
    r = client.completions.create(model="smollm2", prompt="Is water wet? The answer is:", temperature=0,
                                  max_tokens=10, extra_body={"grammar": grammar})
    assert r.choices[0].text in ("yes.", "no.", "maybe."), r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=40,
                                       messages=[{"role": "user", "content": "Count to five."}],
                                       extra_body={"grammar": "root ::= [1-5] (\", \" [1-5]){4}"})
    text = r.choices[0].message.content
    parts = text.split(", ")
    assert len(parts) == 5 and all(p in "12345" for p in parts), text


def test_top_level_json_schema_extension(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "Is it ok?"}]}),
                       ("/v1/completions", {"prompt": "Answer in JSON: is it ok?"})):
        r = httpx.post(server.url + path, headers=server.headers(), timeout=120,
                       json={**body, "temperature": 0, "max_tokens": 30, "json_schema": schema})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        jsonschema.validate(json.loads(text), schema)


def bad_request(server, body, path="/v1/chat/completions"):
    r = httpx.post(server.url + path, headers=server.headers(), timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_unsupported_schema_keyword_is_a_400_naming_it(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="smollm2", max_tokens=4, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "s", "schema": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}})
    assert "uniqueItems" in str(e.value)
    err = bad_request(server, {"json_schema": {"type": "string", "not": {"const": "x"}}})
    assert err["param"] == "json_schema" and "'not'" in err["message"], err
    err = bad_request(server, {"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "string", "pattern": "(a)\\1"}}}})
    assert err["param"] == "response_format" and "pattern" in err["message"], err


def test_conflicting_or_broken_constraints_are_400(server):
    err = bad_request(server, {"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}})
    assert "both constrain" in err["message"], err
    err = bad_request(server, {"grammar": 'root ::= "a"', "json_schema": {"type": "string"}})
    assert err["param"] == "json_schema", err
    err = bad_request(server, {"grammar": "root ::= undefined-rule"})
    assert err["param"] == "grammar" and "undefined-rule" in err["message"], err
    err = bad_request(server, {"grammar": 'root ::= root "a"'})
    assert "left recursion" in err["message"], err
    err = bad_request(server, {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})
    assert "name" in err["message"], err
    err = bad_request(server, {"grammar": 12})
    assert err["param"] == "grammar", err
