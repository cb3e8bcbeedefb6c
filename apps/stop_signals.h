// Long-running subcommands (serve, worker) stop on SIGINT / SIGTERM: the signals are blocked in
// every thread (call this before starting any) and taken by wait_for_stop_signal() on the main
// thread, so shutdown runs as ordinary code. SIGPIPE is ignored: a peer that hangs up must not
// end the process.
#pragma once

#include <signal.h>

namespace hearth::apps {

class StopSignals {
 public:
  StopSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
  }
  // Blocks until SIGINT or SIGTERM; returns its name.
  const char* wait() {
    int received = 0;
    sigwait(&set_, &received);
    return received == SIGINT ? "SIGINT" : "SIGTERM";
  }

 private:
  sigset_t set_;
};

}  // namespace hearth::apps
