// The Catch2 main of the test programs that use LibTorch.
#define CATCH_CONFIG_MAIN
#include <ATen/Context.h>
#undef CHECK
#include <catch2/catch.hpp>

// LibTorch seeds its default generator from the system's entropy, so a test drawing torch::rand without a
// seed of its own would see other inputs on every run. Every test case starts from the same state instead.
struct SeedTorchPerTestCase : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo&) override { at::manual_seed(0); }
};
CATCH_REGISTER_LISTENER(SeedTorchPerTestCase)
