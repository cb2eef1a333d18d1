// The FAB-T plugin: stronger than no attack on a small trained classifier, never outside the epsilon ball
// or [0,1], changing only the images it breaks (images misclassified clean come back unchanged), drawing
// its random restarts from its own generator, refused with a clear error by an oracle that is not a
// classifier, and refusing bad option values when it is made.
#include "torch_catch.hpp"

#include "config/options.hpp"
#include "fashion_classifier.hpp"
#include "failure.hpp"
#include "make_component.hpp"
#include "plugins/components.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"
#include "train/objective_oracle.hpp"

using namespace cfamc::host;
using cfamc::test::make;
using cfamc::test::fashion;
using cfamc::test::FashionClassifier;
using cfamc::test::LogitsOnlyOracle;
using Catch::Matchers::Contains;

namespace {

at::Tensor fab_attack(const std::string& toml, LogitsOnlyOracle& oracle) {
  auto fab = make<Attack>(CFAMC_KIND_ATTACK, "fab", toml);
  TensorMap inputs;
  inputs.insert("x", oracle.classifier.x);
  return fab->perturb(oracle.get(), inputs)["x"];
}

double largest_change(const at::Tensor& adv, const at::Tensor& x) { return (adv - x).abs().max().item<double>(); }

}  // namespace

TEST_CASE("fab lowers the accuracy of a small trained classifier clearly below clean", "[attack][fab]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c);
  const double clean = c.accuracy(c.x);
  const double robust = c.accuracy(fab_attack("epsilon = 0.05\niterations = 20\ntargets = 3", oracle));
  INFO("clean " << clean << ", FAB-T (eps 0.05, 3 targets, 20 iterations) " << robust);
  CHECK(clean > 0.7);
  CHECK(robust < clean - 0.3);
  CHECK(oracle.loss_calls == 0);
}

TEST_CASE("fab stays in the epsilon ball and [0,1], and changes only the images it breaks", "[attack][fab]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c);
  const double eps = 0.02;
  const at::Tensor adv = fab_attack("epsilon = 0.02\niterations = 20\ntargets = 3", oracle);
  REQUIRE(adv.sizes() == c.x.sizes());
  CHECK_FALSE(adv.requires_grad());
  CHECK(largest_change(adv, c.x) <= eps + 1e-6);
  CHECK(adv.min().item<double>() >= 0);
  CHECK(adv.max().item<double>() <= 1);
  // An image that moved is misclassified: one FAB did not break within epsilon comes back clean.
  const at::Tensor moved = (adv - c.x).flatten(1).abs().amax(1).gt(0);
  REQUIRE(moved.any().item<bool>());
  CHECK_FALSE(c.correct(adv).logical_and(moved).any().item<bool>());
  // At this radius some images resist, so "clean or broken" is not met by breaking everything.
  CHECK(c.correct(adv).any().item<bool>());
}

TEST_CASE("fab returns images misclassified clean unchanged", "[attack][fab]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c);
  const at::Tensor adv = fab_attack("epsilon = 0.1\niterations = 10\ntargets = 2", oracle);
  const at::Tensor wrong = c.correct(c.x).logical_not();
  REQUIRE(wrong.any().item<bool>());
  CHECK(torch::equal(adv.index({wrong}), c.x.index({wrong})));
}

TEST_CASE("fab draws its random restarts from its own generator", "[attack][fab]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle first(c), second(c);
  const std::string toml = "epsilon = 0.02\niterations = 5\ntargets = 1\nrestarts = 3";
  torch::manual_seed(7);
  const at::Tensor a = fab_attack(toml, first);
  const at::Tensor global_after = torch::rand({4});
  torch::manual_seed(8);
  const at::Tensor b = fab_attack(toml, second);
  CHECK(torch::equal(a, b));
  torch::manual_seed(7);
  CHECK(torch::equal(global_after, torch::rand({4})));  // the global generator was not drawn from
  CHECK(largest_change(a, c.x) <= 0.02 + 1e-6);
}

TEST_CASE("fab refuses an oracle without logits, naming itself", "[attack][fab]") {
  cfamc::test::check_refuses_training_oracle("fab");
}

TEST_CASE("fab refuses bad option values when it is made", "[attack][fab]") {
  const auto refused = [](const std::string& toml, const std::string& why) {
    INFO(toml);
    try {
      make<Attack>(CFAMC_KIND_ATTACK, "fab", toml);
      FAIL("fab accepted " << toml);
    } catch (const Failure& e) {
      CHECK(e.code() == ExitCode::usage);  // a bad option value points at the run file
      CHECK_THAT(std::string(e.what()), Contains("plugin 'fab'") && Contains(why));
    }
  };
  refused("iterations = 0", "iterations must be positive");
  refused("targets = 0", "targets must be positive");
  refused("restarts = 0", "restarts must be positive");
  refused("epsilon = -0.1", "epsilon must not be negative");
  refused("alpha_max = 1.5", "alpha_max must be in [0, 1]");
  refused("eta = 0.0", "eta must be positive");
  refused("beta = 0.0", "beta must be in (0, 1]");
  CHECK_NOTHROW(make<Attack>(CFAMC_KIND_ATTACK, "fab"));
}
