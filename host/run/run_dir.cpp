#include "run/run_dir.hpp"

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {

fs::path prepare_run_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    fail(ExitCode::other, "cannot create run directory '" + dir + "': " + (ec ? ec.message() : "not a directory"));
  }
  return fs::path(dir);
}

}  // namespace cfamc::host
