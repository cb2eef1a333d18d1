#include "dist/launch.hpp"

#include <cstdlib>
#include <limits>

#include "failure.hpp"

namespace cfamc::host {
namespace {

const char* variable(const char* name) { return std::getenv(name); }

int64_t integer(const char* name, int64_t low, int64_t high) {
  const char* text = variable(name);
  if (text == nullptr) fail(ExitCode::usage, std::string("data-parallel launch: WORLD_SIZE is set but ") + name + " is not");
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < low || value > high) {
    fail(ExitCode::usage, std::string("data-parallel launch: ") + name + "='" + text + "' is not an integer in [" +
                              std::to_string(low) + ", " + std::to_string(high) + "]");
  }
  return value;
}

}  // namespace

std::optional<Launch> launch_from_environment() {
  if (variable("WORLD_SIZE") == nullptr) return std::nullopt;
  Launch launch;
  launch.world = static_cast<int>(integer("WORLD_SIZE", 1, std::numeric_limits<int>::max()));
  launch.rank = static_cast<int>(integer("RANK", 0, launch.world - 1));
  launch.local_rank = variable("LOCAL_RANK") ? static_cast<int>(integer("LOCAL_RANK", 0, launch.world - 1)) : 0;
  if (launch.world == 1) return launch;
  const char* addr = variable("MASTER_ADDR");
  if (addr == nullptr || *addr == '\0') fail(ExitCode::usage, "data-parallel launch: WORLD_SIZE is set but MASTER_ADDR is not");
  launch.master_addr = addr;
  launch.master_port = static_cast<uint16_t>(integer("MASTER_PORT", 1, 65535));
  const char* agent = variable("TORCHELASTIC_USE_AGENT_STORE");
  launch.agent_hosts_store = agent != nullptr && std::string(agent) == "True";
  if (variable("TORCHELASTIC_RESTART_COUNT")) launch.restart = static_cast<int>(integer("TORCHELASTIC_RESTART_COUNT", 0, 1 << 30));
  return launch;
}

}  // namespace cfamc::host
