#include "run/interruption.hpp"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace cfamc::host {
namespace {

std::atomic<int> received{0};

// Only async-signal-safe calls here: an atomic store, write(2), signal(2), raise(3).
void on_signal(int signal) {
  if (received.exchange(signal) != 0) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  const char* text = "\ncfamc-host: stopping after the current step to write a checkpoint (signal again to stop at once)\n";
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, text, std::strlen(text));
}

}  // namespace

void watch_for_interruption() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int interruption() { return received.load(); }

int interruption_exit_code(int signal) { return 128 + signal; }

const char* interruption_name(int signal) { return signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "a signal"; }

}  // namespace cfamc::host
