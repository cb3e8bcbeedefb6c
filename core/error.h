// Errors. Two kinds, kept apart on purpose:
//  - hearth::Error (and subclasses): something the user, a file, a peer or a request got wrong.
//    Thrown with enough context to act on; caught at the edge (CLI, server, link) and reported.
//  - HEARTH_CHECK: a broken invariant inside hearth itself (a programming error). Prints
//    file:line and the failed condition, then aborts. Never used for user-caused conditions.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace hearth {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition, const std::string& message);

inline std::string check_message() { return {}; }
template <class... Args>
std::string check_message(fmt::format_string<Args...> format, Args&&... args) {
  return fmt::format(format, std::forward<Args>(args)...);
}
}  // namespace detail

}  // namespace hearth

// HEARTH_CHECK(cond) or HEARTH_CHECK(cond, "fmt {}", args...): abort on a broken invariant.
#define HEARTH_CHECK(cond, ...)                                                                  \
  do {                                                                                           \
    if (!(cond)) [[unlikely]] {                                                                  \
      ::hearth::detail::check_failed(__FILE__, __LINE__, #cond,                                  \
                                     ::hearth::detail::check_message(__VA_ARGS__));              \
    }                                                                                            \
  } while (0)
