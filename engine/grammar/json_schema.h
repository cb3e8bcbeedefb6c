// JSON Schema -> GBNF (grammar.h), for structured output: text the grammar accepts is JSON that
// the schema accepts.
//
// Supported: `type` (object, array, string, number, integer, boolean, null, or a list of them),
// `properties`, `required`, `additionalProperties` (false, true or a schema; absent counts as
// false when `properties` is given, so the output has only the properties the schema names),
// `enum`, `const`, `items`, `minItems`, `maxItems`, `anyOf` / `oneOf` (any one branch; a value
// that matches two `oneOf` branches is not excluded), `allOf` with one schema, local `$ref`
// (`#`, `#/$defs/...`, `#/definitions/...`, any local JSON pointer; recursion allowed),
// `minLength`, `maxLength`, `pattern` (a regular-expression subset: literals, `.`, classes,
// `\d \w \s` and their negations, groups, `|`, `* + ? {m,n}`, `^` / `$` at the ends; the whole
// string matches it), `format` date, time, date-time and uuid (other formats are annotations and
// ignored), `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` on integers, and on
// numbers (which are then written as integers in range), plus the annotations (title,
// description, default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly).
// Properties come out in the order `properties` lists them (read with nlohmann::ordered_json, as
// the server does; a plain nlohmann::json has them by name), then required names that
// `properties` does not declare.
//
// Anything else (e.g. `not`, `if`, `patternProperties`, `uniqueItems`, `multipleOf`,
// `prefixItems`, `minProperties`) is refused with a SchemaError naming the keyword.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "core/error.h"

namespace hearth::engine::grammar {

class SchemaError : public Error {
 public:
  SchemaError(const std::string& message, std::string keyword_)
      : Error(message), keyword(std::move(keyword_)) {}
  std::string keyword;  // the schema keyword at fault (empty when none applies)
};

// GBNF whose root is one JSON value the schema accepts. Throws SchemaError.
std::string json_schema_to_gbnf(const nlohmann::ordered_json& schema);
// The same for a schema whose key order is already lost (properties by name).
std::string json_schema_to_gbnf(const nlohmann::json& schema);

// GBNF for any JSON object (response_format json_object).
std::string json_object_gbnf();

}  // namespace hearth::engine::grammar
