#include "cli/cli.hpp"

int main(int argc, char** argv) { return cfamc::host::run_cli(argc, argv); }
