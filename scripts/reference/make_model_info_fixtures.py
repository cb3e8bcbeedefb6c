#!/usr/bin/env python3
"""Write tests/fixtures/models/<model>.json: what the `gguf` package reads from the default
models, for the test that compares `hearth info` with it (tests/engine/test_model_info.cpp).

Usage:  python3 scripts/reference/make_model_info_fixtures.py [MODELS_DIR]
Needs:  pip install -r scripts/reference/requirements.txt, and the models fetched with
        scripts/get-model.sh smollm2 and scripts/get-model.sh gemma3-270m
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFValueType as VT

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models"
OUT = ROOT / "tests/fixtures/models"

MODELS_TO_DESCRIBE = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
}

TYPE_NAMES = {
    VT.UINT8: "uint8", VT.INT8: "int8", VT.UINT16: "uint16", VT.INT16: "int16", VT.UINT32: "uint32",
    VT.INT32: "int32", VT.FLOAT32: "float32", VT.BOOL: "bool", VT.STRING: "string", VT.ARRAY: "array",
    VT.UINT64: "uint64", VT.INT64: "int64", VT.FLOAT64: "float64",
}


def scalar(field, part_index):
    """One scalar element of a field, as a plain Python value."""
    part = field.parts[part_index]
    vtype = field.types[-1]
    if vtype == VT.STRING:
        return bytes(part).decode("utf-8", errors="surrogateescape")
    value = part.tolist()[0]
    if vtype == VT.BOOL:
        return bool(value)
    if vtype in (VT.FLOAT32, VT.FLOAT64):
        return float(value)
    return int(value)


def describe_field(key, field):
    entry = {"key": key, "type": TYPE_NAMES[field.types[0]]}
    if field.types[0] == VT.ARRAY:
        entry["elem_type"] = TYPE_NAMES[field.types[1]] if len(field.types) > 1 else "uint8"
        entry["count"] = len(field.data)
        if len(field.types) == 2:  # arrays of scalars or strings (no nesting in these models)
            items = [scalar(field, i) for i in field.data]
            entry["first"] = items[:3]
            entry["last"] = items[-1] if items else None
    else:
        entry["value"] = scalar(field, field.data[0])
    return entry


def describe(name, path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    value = lambda key: scalar(fields[key], fields[key].data[0]) if key in fields else None
    arch = value("general.architecture")

    types = {}
    for t in r.tensors:
        tname = gguf.GGMLQuantizationType(t.tensor_type).name
        entry = types.setdefault(tname, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += int(t.n_bytes)

    hparams = {}
    for field, suffix in [("context_length", "context_length"), ("embedding_length", "embedding_length"),
                          ("block_count", "block_count"), ("feed_forward_length", "feed_forward_length"),
                          ("head_count", "attention.head_count"), ("head_count_kv", "attention.head_count_kv"),
                          ("key_length", "attention.key_length"), ("value_length", "attention.value_length"),
                          ("rms_norm_epsilon", "attention.layer_norm_rms_epsilon"),
                          ("sliding_window", "attention.sliding_window")]:
        v = value(f"{arch}.{suffix}")
        if v is not None:
            hparams[field] = v
    rope = {}
    for field, suffix in [("dimension_count", "rope.dimension_count"), ("freq_base", "rope.freq_base"),
                          ("scaling_type", "rope.scaling.type"), ("scaling_factor", "rope.scaling.factor")]:
        v = value(f"{arch}.{suffix}")
        if v is not None:
            rope[field] = v

    tokenizer = {"model": value("tokenizer.ggml.model"), "pre": value("tokenizer.ggml.pre"),
                 "vocab_size": len(fields["tokenizer.ggml.tokens"].data),
                 "chat_template": "tokenizer.chat_template" in fields}
    if "tokenizer.ggml.merges" in fields:
        tokenizer["merges"] = len(fields["tokenizer.ggml.merges"].data)
    for key in ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"]:
        v = value(f"tokenizer.ggml.{key}")
        if v is not None:
            tokenizer[key] = v

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "model": name,
        "file": path.name,
        "sha256": sha,
        "file_size": path.stat().st_size,
        "gguf_version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "tensor_count": len(r.tensors),
        "metadata_count": len(fields),
        "architecture": arch,
        "name": value("general.name"),
        "file_type": gguf.LlamaFileType(value("general.file_type")).name,
        "parameters": int(sum(int(t.n_elements) for t in r.tensors)),
        "tensor_bytes": int(sum(int(t.n_bytes) for t in r.tensors)),
        "hparams": hparams,
        "rope": rope,
        "tokenizer": tokenizer,
        "tensor_types": types,
        "metadata": [describe_field(k, f) for k, f in fields.items()],
        "tensors": [[t.name, gguf.GGMLQuantizationType(t.tensor_type).name, [int(d) for d in t.shape],
                     int(t.data_offset), int(t.n_bytes)] for t in r.tensors],
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, file in MODELS_TO_DESCRIBE.items():
        path = MODELS / file
        if not path.exists():
            sys.exit(f"{path} is missing: run scripts/get-model.sh {name} first")
        info = describe(name, path)
        (OUT / f"{name}.json").write_text(json.dumps(info, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(f"wrote {OUT / (name + '.json')}")


if __name__ == "__main__":
    main()
