// cfamc::CheckpointedGenerator (sdk/include/cfamc/random.hpp): a plugin's random stream that a checkpoint
// keeps and a resume restores.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <cfamc/random.hpp>

namespace {

struct Owner : torch::nn::Module {
  explicit Owner(uint64_t seed)
      : rng(register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(at::detail::createCPUGenerator(seed)))) {}
  at::Tensor draw() { return torch::rand({8}, *rng->lease()); }
  std::shared_ptr<cfamc::CheckpointedGenerator> rng;
};

}  // namespace

TEST_CASE("sdk CheckpointedGenerator: a restored state draws what the uninterrupted stream draws next", "[sdk]") {
  Owner running(7), resumed(7);
  running.draw();
  const at::Tensor saved = running.named_buffers()["rng.state"].clone();  // a checkpoint after one draw
  const at::Tensor second = running.draw();
  CHECK_FALSE(torch::equal(second, resumed.draw()));  // falsifiable: the streams are one draw apart
  resumed.named_buffers()["rng.state"].copy_(saved);  // what --resume does
  CHECK(torch::equal(resumed.draw(), second));
  CHECK(torch::equal(resumed.draw(), running.draw()));
}

TEST_CASE("sdk CheckpointedGenerator: its state stays a CPU byte tensor when the owner moves or changes dtype", "[sdk]") {
  Owner owner(1);
  owner.to(torch::kDouble);
  owner.to(torch::Device(torch::kCPU), torch::kHalf);
  owner.to(torch::Device(torch::kMeta));  // what a move to a GPU does to every other tensor, on any machine
  const at::Tensor state = owner.named_buffers()["rng.state"];
  CHECK(state.scalar_type() == torch::kByte);
  CHECK(state.device().is_cpu());
  const at::Tensor before = state.clone();
  owner.draw();
  CHECK_FALSE(torch::equal(state, before));  // the lease wrote the advanced state back
}

TEST_CASE("sdk CheckpointedGenerator: a second lease at once is refused (it would replay the first one's draws)", "[sdk]") {
  Owner owner(3);
  const auto first = owner.rng->lease();
  CHECK_THROWS_WITH(owner.rng->lease(), Catch::Matchers::Contains("leased twice"));
}
