#include "shard/stage_assignment.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <fstream>

namespace hearth::shard {

std::string model_identity(const std::filesystem::path& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(fmt::format("{}: {}", path.string(), ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", path.string()));
  constexpr uint64_t kPart = 4u << 20;
  std::vector<char> buffer;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  HEARTH_CHECK(ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1);
  EVP_DigestUpdate(ctx, &size, sizeof(size));
  auto part = [&](uint64_t offset, uint64_t length) {
    buffer.resize(length);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(buffer.data(), static_cast<std::streamsize>(length));
    if (!in) throw Error(fmt::format("{}: read failed", path.string()));
    EVP_DigestUpdate(ctx, buffer.data(), length);
  };
  part(0, std::min(size, kPart));
  if (size > kPart) part(size - std::min(size - kPart, kPart), std::min(size - kPart, kPart));
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

nlohmann::json StageAssignment::to_json() const {
  return {{"session", session},       {"stage", stage},
          {"n_stages", n_stages},     {"first", first},
          {"last", last},             {"n_ctx", n_ctx},
          {"n_seq", n_seq},           {"n_batch", n_batch},
          {"kv_type", dtype_name(kv_type)},
          {"wire", wire_dtype_name(wire)}, {"model_name", model_name},
          {"model_path", model_path}, {"model_size", model_size},
          {"model_identity", model_identity}, {"next", next}};
}

StageAssignment StageAssignment::from_json(const nlohmann::json& j) {
  StageAssignment a;
  try {
    a.session = j.at("session").get<uint64_t>();
    a.stage = j.at("stage").get<int32_t>();
    a.n_stages = j.at("n_stages").get<int32_t>();
    a.first = j.at("first").get<int32_t>();
    a.last = j.at("last").get<int32_t>();
    a.n_ctx = j.at("n_ctx").get<int32_t>();
    a.n_seq = j.at("n_seq").get<int32_t>();
    a.n_batch = j.value("n_batch", 512);  // absent from coordinators that predate it
    const std::string kv = j.at("kv_type").get<std::string>();
    if (kv == "F16") {
      a.kv_type = DType::F16;
    } else if (kv == "F32") {
      a.kv_type = DType::F32;
    } else if (kv == "Q8_0") {
      a.kv_type = DType::Q8_0;
    } else {
      throw WireError(fmt::format("LoadStage: KV cache type {} is not supported", kv));
    }
    a.wire = wire_dtype_from_name(j.at("wire").get<std::string>());
    a.model_name = j.at("model_name").get<std::string>();
    a.model_path = j.at("model_path").get<std::string>();
    a.model_size = j.at("model_size").get<uint64_t>();
    a.model_identity = j.at("model_identity").get<std::string>();
    a.next = j.at("next").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw WireError(fmt::format("LoadStage: {}", e.what()));
  } catch (const WireError&) {
    throw;
  } catch (const Error& e) {
    throw WireError(fmt::format("LoadStage: {}", e.what()));
  }
  if (a.n_stages < 1 || a.stage < 0 || a.stage >= a.n_stages || a.first < 0 || a.first >= a.last || a.n_ctx < 1 ||
      a.n_ctx > (1 << 24) || a.n_seq < 1 || a.n_seq > 4096 ||
      a.n_batch < 1 || a.n_batch > (1 << 16) || a.model_name.find('/') != std::string::npos) {
    throw WireError("LoadStage: a field is out of range");
  }
  return a;
}

}  // namespace hearth::shard
