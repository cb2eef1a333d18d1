// Where this process stands in a data-parallel job, as its launcher says: torchrun, srun and mpirun
// wrappers all set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. No LibTorch here, so the
// command line can read and check it before anything heavy starts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cfamc::host {

struct Launch {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr;
  uint16_t master_port = 0;
  // torchrun's agent hosts the rendezvous store (TORCHELASTIC_USE_AGENT_STORE=True): every process is its
  // client. Otherwise rank 0 hosts it.
  bool agent_hosts_store = false;
  int restart = 0;  // TORCHELASTIC_RESTART_COUNT: a restarted job must not read the last attempt's keys
};

// The launch the environment describes; nullopt when WORLD_SIZE is unset (a plain single-process run).
// Failure(usage) naming the variable when one is missing or malformed.
std::optional<Launch> launch_from_environment();

}  // namespace cfamc::host
