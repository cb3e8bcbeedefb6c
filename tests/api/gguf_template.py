"""Writes a copy of a GGUF file with another `tokenizer.chat_template` (the tensors untouched),
so that a test can serve a model whose template has tool sections."""
import struct
from pathlib import Path

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", data, at)
    return data[at + 8:at + 8 + n], at + 8 + n


def _skip_value(data: bytes, at: int, kind: int) -> int:
    if kind == 8:
        return _string(data, at)[1]
    if kind == 9:
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        for _ in range(count):
            at = _skip_value(data, at, item)
        return at
    return at + _SIZES[kind]


def with_chat_template(src: Path, dst: Path, template: str) -> None:
    data = src.read_bytes()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version >= 2, "not a GGUF v2/v3 file"
    at = 24
    kvs, alignment, replaced = [], 32, False
    for _ in range(n_kv):
        start = at
        key, at = _string(data, at)
        (kind,) = struct.unpack_from("<I", data, at)
        at = _skip_value(data, at + 4, kind)
        if key == b"tokenizer.chat_template":
            body = template.encode()
            kvs.append(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(body)) + body)
            replaced = True
        else:
            if key == b"general.alignment":
                (alignment,) = struct.unpack_from("<I", data, at - 4)
            kvs.append(data[start:at])
    if not replaced:
        key, body = b"tokenizer.chat_template", template.encode()
        kvs.append(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(body)) + body)
        n_kv += 1
    infos_start = at
    for _ in range(n_tensors):
        _, at = _string(data, at)
        (n_dims,) = struct.unpack_from("<I", data, at)
        at += 4 + 8 * n_dims + 4 + 8
    infos = data[infos_start:at]
    data_start = (at + alignment - 1) // alignment * alignment
    head = struct.pack("<4sIQQ", magic, version, n_tensors, n_kv) + b"".join(kvs) + infos
    head += b"\0" * ((-len(head)) % alignment)
    dst.write_bytes(head + data[data_start:])
