// The command line of cfamc-host. Returns the process exit code; every failure is reported as one
// `error: ...` line on stderr (README.md, "Exit codes").
#pragma once

namespace cfamc::host {

int run_cli(int argc, char** argv);

}  // namespace cfamc::host
