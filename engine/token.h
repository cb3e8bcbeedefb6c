// A token id: an index into the model's vocabulary. The one type every room of engine/ shares
// (text makes tokens, model computes on them, batch and generate sample and schedule them).
#pragma once

#include <cstdint>

namespace hearth::engine {

using Token = int32_t;

}  // namespace hearth::engine
