// The robustness curve: robust accuracies by epsilon, with the clean point measured on the attacked images.
#include <catch2/catch.hpp>

#include "eval/robustness_curve.hpp"

using cfamc::host::robustness_curve;
using nlohmann::json;

TEST_CASE("the curve's clean point is the attacked subset's clean accuracy when there is one", "[eval]") {
  const std::vector<std::pair<std::string, double>> epsilons = {{"pgd8", 8.0 / 255}, {"pgd2", 2.0 / 255}};
  json metrics = {{"accuracy", 0.80}, {"robust_accuracy", {{"pgd2", 0.50}, {"pgd8", 0.20}}}};
  auto curve = robustness_curve(metrics, epsilons);
  REQUIRE(curve.size() == 3);
  CHECK(curve[0].attack == "clean");
  CHECK(curve[0].accuracy == Approx(0.80));  // the whole split was attacked
  CHECK(curve[1].attack == "pgd2");          // sorted by epsilon
  CHECK(curve[2].accuracy == Approx(0.20));

  metrics["robust_subset"] = {{"clean_accuracy", 0.75}, {"images", 500}};
  curve = robustness_curve(metrics, epsilons);
  REQUIRE(curve.size() == 3);
  CHECK(curve[0].accuracy == Approx(0.75));
}

TEST_CASE("no robust accuracy, no curve", "[eval]") {
  CHECK(robustness_curve(json{{"accuracy", 0.8}}, {{"pgd8", 8.0 / 255}}).empty());
  CHECK(robustness_curve(json{{"accuracy", 0.8}, {"robust_accuracy", {{"other", 0.1}}}}, {{"pgd8", 8.0 / 255}}).empty());
}
