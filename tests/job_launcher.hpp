// Launching a data-parallel job in a test as a launcher does: one process per rank with RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (loopback, a free port), every one bounded in time.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace cfamc::test {

// A TCP port nobody listens on now (the kernel's choice for port 0).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

struct JobOutcome {
  std::vector<int> exit_codes;  // per rank; 128 + signal for a killed one, -1 when the deadline killed it
  std::vector<std::string> logs;
  std::vector<double> ended_at;  // per rank, seconds after the start
  double seconds = 0;
};

// Runs `command` (through /bin/sh) as `world` ranks of one job from `dir`, each rank's output in
// dir/rank<r>.log. `during(pids)` runs beside them (to kill one). Ranks still running after `limit_s`
// are killed and reported as -1.
inline JobOutcome run_job(const std::filesystem::path& dir, int world, const std::string& command, double limit_s,
                          const std::function<void(const std::vector<pid_t>&)>& during = {}) {
  const int port = free_port();
  std::vector<pid_t> pids;
  const auto start = std::chrono::steady_clock::now();
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry(*e);
      if (entry.rfind("CFAMC_PLUGIN_PATH=", 0) != 0 && entry.rfind("TORCHELASTIC", 0) != 0) env.push_back(entry);
    }
    for (const std::string& entry : {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
                                     "WORLD_SIZE=" + std::to_string(world), std::string("MASTER_ADDR=127.0.0.1"),
                                     "MASTER_PORT=" + std::to_string(port), std::string("OMP_NUM_THREADS=1")})
      env.push_back(entry);
    std::vector<char*> envp;
    for (auto& entry : env) envp.push_back(entry.data());
    envp.push_back(nullptr);
    // exec: the pid is the command's own, so that a test can kill the rank itself.
    const std::string shell = "exec " + command + " > " + (dir / ("rank" + std::to_string(rank) + ".log")).string() + " 2>&1";
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execle("/bin/sh", "sh", "-c", shell.c_str(), static_cast<char*>(nullptr), envp.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  if (during) during(pids);
  JobOutcome outcome;
  outcome.exit_codes.assign(world, -1);
  outcome.ended_at.assign(world, 0);
  const auto since_start = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  size_t running = pids.size();
  while (running > 0) {
    for (size_t r = 0; r < pids.size(); ++r) {
      int status = 0;
      if (outcome.exit_codes[r] != -1 || ::waitpid(pids[r], &status, WNOHANG) != pids[r]) continue;
      outcome.exit_codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      outcome.ended_at[r] = since_start();
      --running;
    }
    if (running > 0 && since_start() > limit_s) {
      for (size_t r = 0; r < pids.size(); ++r) {
        if (outcome.exit_codes[r] != -1) continue;
        ::kill(pids[r], SIGKILL);
        ::waitpid(pids[r], nullptr, 0);
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  outcome.seconds = since_start();
  for (int rank = 0; rank < world; ++rank) {
    std::ifstream in(dir / ("rank" + std::to_string(rank) + ".log"));
    std::stringstream text;
    text << in.rdbuf();
    outcome.logs.push_back(text.str());
  }
  return outcome;
}

}  // namespace cfamc::test
