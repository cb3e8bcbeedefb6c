// The bytes of a GGUF model's tokens for grammar matching, read from the tokenizer metadata
// (`tokenizer.ggml.model`, `.tokens`, `.token_type`) without building a tokenizer: a pipeline's
// last stage (a worker, which has the file's header but no tokenizer) and the coordinator get
// the same bytes from the same file.
#pragma once

#include <memory>

#include "engine/format/gguf.h"
#include "engine/grammar/matcher.h"

namespace hearth::engine::grammar {

// Normal tokens decode as the tokenizer renders them (byte-level BPE: GPT-2's code point per
// byte; SentencePiece: U+2581 as a space), byte tokens <0xXX> as their byte, user-defined tokens
// as their text; control, unknown, unused and undefined tokens get no bytes (never allowed as
// text). Throws gguf::MetadataError when the token list is missing or mistyped.
std::shared_ptr<const Vocabulary> vocabulary_from_gguf(const gguf::GgufFile& file);

}  // namespace hearth::engine::grammar
