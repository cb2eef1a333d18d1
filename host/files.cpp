#include "files.hpp"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {

void write_file_atomically(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(ExitCode::other, "cannot write " + tmp.string() + ": " + std::strerror(errno));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(ExitCode::other, "cannot write " + tmp.string() + ": " + std::strerror(err));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(ExitCode::other, "cannot flush " + tmp.string() + ": " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(ExitCode::other, "cannot replace " + path.string() + ": " + std::strerror(err));
  }
}

bool is_write_temporary(const std::string& filename, std::string& target) {
  const size_t mark = filename.rfind(".tmp.");
  if (mark == std::string::npos || mark == 0 || mark + 5 == filename.size()) return false;
  for (size_t i = mark + 5; i < filename.size(); ++i)
    if (filename[i] < '0' || filename[i] > '9') return false;
  target = filename.substr(0, mark);
  return true;
}

void remove_tree(const fs::path& path) {
  const auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) { return ::remove(entry); };
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) return;
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    fail(ExitCode::other, "cannot delete " + path.string() + ": " + std::strerror(errno));
  }
}

}  // namespace cfamc::host
