#!/usr/bin/env python3
"""Write the tokenizer fixtures: llama.cpp's token ids for every string of the corpus.

For each model, tests/fixtures/tokenizer/<name>.json holds, in corpus order, the ids that
llama.cpp (through llama-cpp-python, vocabulary only) gives with parse_special on and off,
BOS added as the model's metadata says, plus the model's bos/eos/eot ids and its
end-of-generation set. tests/engine/test_tokenizer.cpp compares hearth's tokenizer with them.

The other byte-level BPE pre-tokenizers (llama-bpe, qwen2, deepseek-llm, default, gpt-2) are
checked on SmolLM2's vocabulary with only `tokenizer.ggml.pre` changed: a vocabulary-only
GGUF is written to a temporary directory for llama.cpp, and the test rebuilds the same
tokenizer metadata in memory (smollm2-pre-<name>.json).

Not run in CI; the fixtures are committed. Usage:
    python scripts/reference/make_tokenizer_fixtures.py [--models-dir models]
Needs: llama-cpp-python (and the two GGUF files, see scripts/get-model.sh).
"""
import argparse
import json
import pathlib
import sys
import tempfile

import gguf

import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
}
PRE_VARIANTS = ["llama-bpe", "qwen2", "deepseek-llm", "default", "gpt-2"]


def vocab_facts(llm):
    """bos/eos/eot and the end-of-generation set, as llama.cpp's vocabulary reports them."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return {
        "n_tokens": n,
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "eog": [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)],
    }


def write_pre_variant(src: pathlib.Path, pre: str, dst: pathlib.Path):
    """`src` with tokenizer.ggml.pre set to `pre`: hyperparameters and tokenizer keys, no tensors.
    The tokenizer keys kept are the ones the C++ test copies (it sets general.name too)."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), "llama")
    for key, field in reader.fields.items():
        keep = key.startswith("llama.") or key == "general.name" or (
            key.startswith("tokenizer.ggml.") and key != "tokenizer.chat_template")
        if not keep:
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_fixture(name, file, llm, corpus):
    facts = vocab_facts(llm)
    cases = []
    for text in corpus:
        data = text.encode("utf-8")
        cases.append({
            "special": llm.tokenize(data, add_bos=facts["add_bos"], special=True),
            "plain": llm.tokenize(data, add_bos=facts["add_bos"], special=False),
        })
    out = {
        "model": file,
        "llama_cpp_python": llama_cpp.__version__,
        **facts,
        "cases": cases,
    }
    # One case per line keeps the file small and its diffs readable.
    lines = [json.dumps({k: v for k, v in out.items() if k != "cases"})[:-1] + ', "cases": [']
    lines += [json.dumps(c, separators=(",", ":")) + ("," if i + 1 < len(cases) else "")
              for i, c in enumerate(cases)]
    lines.append("]}")
    (FIXTURES / f"{name}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {name}.json: {len(cases)} strings")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args()

    corpus = json.loads((FIXTURES / "corpus.json").read_text(encoding="utf-8"))
    for name, file in MODELS.items():
        path = pathlib.Path(args.models_dir) / file
        if not path.exists():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        write_fixture(name, file, llm, corpus)

    smollm2 = pathlib.Path(args.models_dir) / MODELS["smollm2"]
    if smollm2.exists():
        with tempfile.TemporaryDirectory() as tmp:
            for pre in PRE_VARIANTS:
                variant = pathlib.Path(tmp) / f"smollm2-pre-{pre}.gguf"
                write_pre_variant(smollm2, pre, variant)
                llm = llama_cpp.Llama(model_path=str(variant), vocab_only=True, verbose=False)
                write_fixture(f"smollm2-pre-{pre}", f"{MODELS['smollm2']} with tokenizer.ggml.pre = {pre}", llm,
                              corpus)


if __name__ == "__main__":
    main()
