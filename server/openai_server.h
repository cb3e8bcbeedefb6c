// The OpenAI-compatible HTTP server (cpp-httplib): /v1/chat/completions, /v1/completions
// (streamed as OpenAI streams, or whole), /v1/models, /health, /metrics, /tokenize,
// /detokenize. Requests are validated (server/api_request.h), templated and tokenized on the
// HTTP threads and handed to the engine's Scheduler, which batches them continuously.
//
// Lifecycle: construct, bind() (the port answers at once: /health says 503 while loading),
// attach() the model and scheduler once they are ready, run() until stop().
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
  int http_threads = 32;           // connections served at once (streams hold one each)
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
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hearth::server
