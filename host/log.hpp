// The host's log. Only log.cpp sees spdlog: LibTorch ships its own {fmt} headers, which clash with the
// {fmt} that Debian's spdlog is built against, so no translation unit includes both.
#pragma once

#include <string>

namespace cfamc::host {

enum class LogLevel { debug, info, warn, error };

// Messages go to stderr, so that stdout carries only results (--list-plugins --json).
void configure_logging(const std::string& level);
void log(LogLevel level, const std::string& message);
// Every later message begins with `prefix` ("[rank 1/4] "): the processes of a data-parallel job share a terminal.
void set_log_prefix(const std::string& prefix);

}  // namespace cfamc::host
