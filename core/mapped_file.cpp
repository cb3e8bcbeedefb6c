#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace hearth {
namespace {

[[noreturn]] void throw_os_error(const std::string& what, const std::string& path, int err) {
  throw Error(fmt::format("{} '{}': {}", what, path, std::strerror(err)));
}

struct FileDescriptor {
  int fd = -1;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const std::string name = path.string();
  FileDescriptor file;
  file.fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd < 0) throw_os_error("cannot open", name, errno);
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) throw_os_error("cannot stat", name, errno);
  if (!S_ISREG(st.st_mode)) throw Error(fmt::format("'{}' is not a regular file", name));

  std::shared_ptr<MappedFile> mapped(new MappedFile());
  mapped->name_ = name;
  mapped->size_ = static_cast<size_t>(st.st_size);
  if (mapped->size_ == 0) {
    static const uint8_t kEmpty = 0;
    mapped->data_ = &kEmpty;  // valid pointer, zero bytes readable
    return mapped;
  }
  void* p = ::mmap(nullptr, mapped->size_, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (p == MAP_FAILED) throw_os_error("cannot memory-map", name, errno);
  mapped->mapping_ = p;
  mapped->data_ = static_cast<const uint8_t*>(p);
  return mapped;
}

std::shared_ptr<const MappedFile> MappedFile::from_bytes(std::vector<uint8_t> bytes, std::string name) {
  std::shared_ptr<MappedFile> mapped(new MappedFile());
  mapped->owned_ = std::move(bytes);
  mapped->name_ = std::move(name);
  mapped->size_ = mapped->owned_.size();
  mapped->data_ = mapped->owned_.data();
  return mapped;
}

MappedFile::~MappedFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

void MappedFile::release(std::span<const uint8_t> bytes) const {
  if (mapping_ == nullptr || bytes.empty()) return;
  HEARTH_CHECK(bytes.data() >= data_ && bytes.data() + bytes.size() <= data_ + size_, "release of bytes outside {}", name_);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(bytes.data()) + page - 1) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(bytes.data() + bytes.size()) / page * page;
  // Advice only: a failure leaves the pages resident, which is harmless.
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace hearth
