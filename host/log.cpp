#include "log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace cfamc::host {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto l = spdlog::stderr_color_mt("cfamc");
    l->set_pattern("[%H:%M:%S %^%l%$] %v");
    return l;
  }();
  return instance;
}

}  // namespace

void configure_logging(const std::string& level) { logger()->set_level(spdlog::level::from_str(level)); }

void set_log_prefix(const std::string& prefix) {
  std::string escaped;
  for (char c : prefix) escaped += c == '%' ? std::string("%%") : std::string(1, c);
  logger()->set_pattern("[%H:%M:%S %^%l%$] " + escaped + "%v");
}

void log(LogLevel level, const std::string& message) {
  switch (level) {
    case LogLevel::debug: logger()->debug(message); break;
    case LogLevel::info: logger()->info(message); break;
    case LogLevel::warn: logger()->warn(message); break;
    case LogLevel::error: logger()->error(message); break;
  }
}

}  // namespace cfamc::host
