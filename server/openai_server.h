// The OpenAI-compatible HTTP server (cpp-httplib): /v1/chat/completions, /v1/completions,
// /v1/responses (streamed as OpenAI streams, or whole), Anthropic's /v1/messages, /v1/models,
// /health, /metrics, /tokenize, /detokenize. Requests are validated (server/api_request.h), templated and tokenized on the
// HTTP threads and handed to the engine's Scheduler, which batches them continuously.
//
// Lifecycle: construct, bind() (the port answers at once: /health says 503 while loading),
// attach() the model and scheduler once they are ready, run() until stop(). Connections are
// handled by server/http_server.h (idle ones hold no thread); a request waits for a slot in the
// scheduler's queue for at most the queue timeout.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "server/metrics.h"

namespace httplib {
class Server;
}

namespace hearth::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (see bind())
  std::string api_key;             // empty: no key needed
  std::string model_id;            // the name /v1/models lists and responses carry
  size_t max_body_bytes = 16u << 20;
  int http_threads = 32;           // requests served at once (streams hold one each to their end)
  int max_connections = 1024;      // open connections; idle ones hold no thread (server/http_server.h)
  double idle_timeout_s = 30;      // an idle keep-alive connection is closed after this
  double queue_timeout_s = 300;    // a request still waiting for a slot after this: 503 (0: no limit)
  double shutdown_grace_s = 5;     // stop(): streams in flight may finish within this, then end
  std::string tool_format;         // "auto" or empty: from the model's chat template; generic, hermes, llama3
  size_t stored_responses = 256;   // /v1/responses kept for previous_response_id (oldest dropped first)
};

class OpenAiServer {
 public:
  explicit OpenAiServer(ServerOptions options);
  ~OpenAiServer();
  OpenAiServer(const OpenAiServer&) = delete;
  OpenAiServer& operator=(const OpenAiServer&) = delete;

  // Binds the listening socket; returns the port. Throws hearth::Error when it cannot.
  int bind();
  // Serves the model from now on (the scheduler runs it). Both must outlive the server.
  void attach(engine::Model& model, engine::Scheduler& scheduler);
  // Serves until stop() (from any thread). Returns false if the listener failed.
  bool run();
  // Stops accepting and closes idle connections at once; requests in flight may finish within
  // the shutdown grace, then streams end with an error event and other requests with a 503.
  // Returns when no request is left. Idempotent; from any thread but a handler's.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hearth::server
