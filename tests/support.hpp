// Helpers shared by the tests: temporary files and running the host executable.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "files.hpp"

namespace cfamc::test {

// A fresh directory under the system temp dir, removed when the object goes.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("cfamc-test-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { cfamc::host::remove_tree(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& text) const {
    const auto file = path_ / name;
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::filesystem::path path_;
};

struct Outcome {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell; `env` is prepended ("CFAMC_PLUGIN_PATH=... ").
inline Outcome run_shell(const std::string& command) {
  Outcome outcome;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return outcome;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) outcome.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return outcome;
}

// Runs cfamc-host with `args`; the plugin path holds only `plugin_path` (besides the shipped plugins).
inline Outcome run_host(const std::string& args, const std::string& plugin_path = "") {
  return run_shell("env -u CFAMC_PLUGIN_PATH " + (plugin_path.empty() ? "" : "CFAMC_PLUGIN_PATH=" + plugin_path + " ") +
                   CFAMC_HOST_EXE + " " + args);
}

inline std::string test_plugin(const std::string& folder) { return std::string(CFAMC_TEST_PLUGIN_DIR) + "/" + folder; }

// {tag: [[step, value], ...]} as TensorBoard reads `dir`.
inline nlohmann::json read_with_tensorboard(const std::filesystem::path& dir) {
  const std::string python = CFAMC_TEST_PYTHON;
  if (python.empty()) FAIL("CFAMC_TEST_PYTHON is empty: run scripts/setup.sh or set it when configuring");
  const auto outcome = run_shell("'" + python + "' '" + CFAMC_SOURCE_DIR "/tests/python/read_events.py' '" +
                                              dir.string() + "'");
  INFO(outcome.output);
  REQUIRE(outcome.exit_code == 0);
  // The JSON is the last line: TensorBoard may warn on stderr, which run_shell merges in.
  std::string text = outcome.output;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t line_end = text.rfind('\n');
  return nlohmann::json::parse(line_end == std::string::npos ? text : text.substr(line_end + 1));
}

}  // namespace cfamc::test
