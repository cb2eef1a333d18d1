// The Square Attack plugin: stronger than no attack on a small trained classifier, inside the ball and
// [0,1], black-box (it reads logits and labels, never the loss, and builds no graph), and refused with a
// clear error by an oracle that is not a classifier.
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

at::Tensor square_attack(const std::string& toml, LogitsOnlyOracle& oracle) {
  auto square = make<Attack>(CFAMC_KIND_ATTACK, "square", toml);
  TensorMap inputs;
  inputs.insert("x", oracle.classifier.x);
  return square->perturb(oracle.get(), inputs)["x"];
}

}  // namespace

TEST_CASE("square lowers the accuracy of a small trained classifier, and its search beats its start", "[attack][square]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c), start_only(c);
  const double clean = c.accuracy(c.x);
  const double robust = c.accuracy(square_attack("epsilon = 0.1\nqueries = 300", oracle));
  // One iteration is little more than the vertical stripes it starts from.
  const double robust_start = c.accuracy(square_attack("epsilon = 0.1\nqueries = 1", start_only));
  INFO("clean " << clean << ", Square-300 " << robust << ", Square-1 " << robust_start);
  CHECK(clean > 0.7);
  CHECK(robust < clean);
  CHECK(robust < robust_start);
}

TEST_CASE("square stays in the epsilon ball and [0,1], and returns images misclassified clean unchanged", "[attack][square]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c);
  const double eps = 0.05;
  const at::Tensor adv = square_attack("epsilon = 0.05\nqueries = 100", oracle);
  REQUIRE(adv.sizes() == c.x.sizes());
  const double largest = (adv - c.x).abs().max().item<double>();
  CHECK(largest <= eps + 1e-6);
  CHECK(largest >= eps - 1e-6);  // it does move: the bound above is not met by doing nothing
  CHECK(adv.min().item<double>() >= 0);
  CHECK(adv.max().item<double>() <= 1);
  CHECK_FALSE(adv.requires_grad());
  const at::Tensor wrong = c.correct(c.x).logical_not();
  REQUIRE(wrong.any().item<bool>());
  CHECK(torch::equal(adv.index({wrong}), c.x.index({wrong})));
}

TEST_CASE("square is black-box: logits and labels only, no loss, no graph, broken images no longer queried", "[attack][square]") {
  const FashionClassifier& c = fashion();
  LogitsOnlyOracle oracle(c);
  const int64_t queries = 50;
  const at::Tensor adv = square_attack("epsilon = 0.1\nqueries = " + std::to_string(queries), oracle);
  CHECK(oracle.loss_calls == 0);
  CHECK(oracle.inputs_requiring_grad == 0);
  CHECK(oracle.graphs_built == 0);
  CHECK(c.accuracy(adv) < c.accuracy(c.x));
  // Querying every correctly classified image at every iteration: the clean pass, the start, the iterations.
  const int64_t n = c.x.size(0), correct = c.correct(c.x).sum().item<int64_t>();
  INFO("rows queried " << oracle.rows << " of at most " << n + correct * (queries + 1));
  CHECK(oracle.rows < n + correct * (queries + 1));
}

TEST_CASE("square refuses an oracle without logits or labels, naming itself", "[attack][square]") {
  auto square = make<Attack>(CFAMC_KIND_ATTACK, "square");
  SECTION("the training oracle: an objective's loss only") { cfamc::test::check_refuses_training_oracle("square"); }
  SECTION("logits without labels") {
    LogitsOnlyOracle classifier(fashion());
    cfamc_oracle unlabelled = classifier.get();
    unlabelled.labels = nullptr;
    TensorMap inputs;
    inputs.insert("x", fashion().x);
    CHECK_THROWS_WITH(square->perturb(unlabelled, inputs), Contains("needs an oracle with logits and labels"));
    CHECK(classifier.rows == 0);
  }
}
