#include "transport/log.h"

#include <cstdio>
#include <mutex>
#include <string>

namespace hearth::transport {
namespace {
std::mutex& sink_mutex() {
  static std::mutex mutex;
  return mutex;
}
LogSink& sink() {
  static LogSink s;
  return s;
}
}  // namespace

void set_log_sink(LogSink new_sink) {
  std::lock_guard lock(sink_mutex());
  sink() = std::move(new_sink);
}

void log_line(std::string_view line) {
  std::lock_guard lock(sink_mutex());
  if (sink()) {
    sink()(line);
    return;
  }
  std::fprintf(stderr, "hearth: transport: %.*s\n", static_cast<int>(line.size()), line.data());
}

}  // namespace hearth::transport
