// Where the transport library reports what it did on its own: a link closed because a peer
// sent a bad frame, failed authentication or fell silent. Library code does not print to a
// terminal it does not own; it calls the sink. The default sink writes one line to stderr.
#pragma once

#include <functional>
#include <string_view>

namespace hearth::transport {

using LogSink = std::function<void(std::string_view line)>;

// Replaces the sink for the whole process (thread-safe); an empty function restores stderr.
void set_log_sink(LogSink sink);

// Sends one line to the sink (thread-safe; the sink is called under a lock, one line at a time).
void log_line(std::string_view line);

}  // namespace hearth::transport
