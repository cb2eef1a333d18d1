// How the host fails: one exception type carrying the documented exit code. main() turns it into a
// single `error: ...` line on stderr; nothing else escapes.
#pragma once

#include <stdexcept>
#include <string>

namespace cfamc::host {

// Documented in README.md ("Exit codes"); scripts depend on these numbers.
enum class ExitCode : int {
  ok = 0,
  other = 1,     // anything not below
  usage = 2,     // bad command line or run file
  plugin = 3,    // plugin not found, ABI or fingerprint mismatch, error raised by a plugin
  data = 4,      // missing, truncated or malformed data
  diverged = 5,  // the training loss became NaN or infinite
  peer = 6,      // data-parallel: another process of the job died, hung past the timeout, or was unreachable
  interrupted = 130,  // SIGINT (Ctrl-C): stopped after a step and wrote a checkpoint
  terminated = 143,   // SIGTERM: likewise
};

class Failure : public std::runtime_error {
 public:
  Failure(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

[[noreturn]] inline void fail(ExitCode code, const std::string& message) { throw Failure(code, message); }

}  // namespace cfamc::host
