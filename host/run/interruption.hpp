// SIGINT and SIGTERM during a run: the first asks the run to stop at the next step boundary (it then
// writes a checkpoint and exits 130 or 143); a second ends the process at once, as the default would.
#pragma once

namespace cfamc::host {

// Installs the handlers for this process.
void watch_for_interruption();
// The signal received so far (SIGINT, SIGTERM), or 0.
int interruption();
// The exit code for `signal`: 128 + its number (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
int interruption_exit_code(int signal);
const char* interruption_name(int signal);

}  // namespace cfamc::host
