// Attack sequences ([attack_sequences], AutoAttack's standard evaluation): each attack runs only on the
// images the earlier ones failed to break, the final robust accuracy is at most each part's alone, the
// figures per attack are reported, and an attack without gradients that breaks what gradient attacks could
// not is flagged as gradient masking.
#include "torch_catch.hpp"

#include "eval/eval_services.hpp"
#include "fashion_classifier.hpp"
#include "make_component.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"

using namespace cfamc::host;
using cfamc::test::ClassifierOracle;
using cfamc::test::fashion;
using cfamc::test::make;

namespace {

// A PGD too short to break everything it could, so that Square has images left to break.
const char* const kPgd = "epsilon = 0.1\nstep_size = 0.01\nsteps = 3\nrandom_start = false";
const char* const kSquare = "epsilon = 0.1\nqueries = 200";

// Runs attack `id` of `services` on the test images; the adversarial images.
at::Tensor attack(const EvalServices& services, const std::string& id, ClassifierOracle& oracle) {
  cfamc_tensor x{fashion().x};
  cfamc_tensor* out = nullptr;
  const cfamc_oracle c_oracle = oracle.get();
  check_plugin(services.get()->attack(services.get()->self, id.c_str(), &c_oracle, &x, &out), "test");
  return adopt(out);
}

// Robust accuracy as evaluators count it: right under attack and right clean.
double robust(const ClassifierOracle& oracle, const at::Tensor& adversarial) {
  torch::NoGradGuard no_grad;
  const at::Tensor clean = oracle.logits(fashion().x).argmax(1).eq(fashion().y);
  return oracle.logits(adversarial).argmax(1).eq(fashion().y).logical_and(clean).to(at::kDouble).mean().item<double>();
}

}  // namespace

TEST_CASE("an attack sequence is at most as accurate as each of its attacks alone, and reports each", "[attack][sequence]") {
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", kPgd), square = make<Attack>(CFAMC_KIND_ATTACK, "square", kSquare);
  auto pgd_alone = make<Attack>(CFAMC_KIND_ATTACK, "pgd", kPgd);
  auto square_alone = make<Attack>(CFAMC_KIND_ATTACK, "square", kSquare);
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8");
  cfamc::test::TempDir dir;
  EvalServices services(*backbone, nullptr, {},
                        {{"pgd", pgd_alone.get(), {}},
                         {"square", square_alone.get(), {}},
                         {"aa", nullptr, {{"pgd", pgd.get()}, {"square", square.get()}}}},
                        dir.path());
  ClassifierOracle oracle(false);
  const double clean = oracle.accuracy(fashion().x);
  const double by_pgd = robust(oracle, attack(services, "pgd", oracle));
  const double by_square = robust(oracle, attack(services, "square", oracle));
  const at::Tensor adversarial = attack(services, "aa", oracle);
  const double by_sequence = robust(oracle, adversarial);
  INFO("clean " << clean << ", PGD " << by_pgd << ", Square " << by_square << ", sequence " << by_sequence);
  CHECK(by_sequence <= std::min(by_pgd, by_square));
  CHECK(by_sequence < by_pgd);  // Square finds images PGD left
  CHECK((adversarial - fashion().x).abs().max().item<double>() <= 0.1 + 1e-6);

  const auto report = services.metrics()["attack_sequences"]["aa"];
  INFO(report.dump());
  CHECK(report["images"] == 300);
  CHECK(report["clean_accuracy"].get<double>() == Approx(clean));
  CHECK(report["pgd"]["robust_accuracy"].get<double>() == Approx(by_pgd).margin(1.0 / 300));
  CHECK(report["square"]["robust_accuracy"].get<double>() == Approx(by_sequence));
  CHECK(report["pgd"]["gradient_calls"].get<int64_t>() >= 3);
  CHECK(report["square"]["gradient_calls"] == 0);
  CHECK(report["square"]["forward_calls"].get<int64_t>() > 0);
  // Square runs only on what PGD left.
  CHECK(report["square"]["images_attacked"].get<double>() == Approx(by_pgd * 300).margin(1));
}

TEST_CASE("an attack sequence flags gradient masking when a black-box attack breaks what gradients could not", "[attack][sequence]") {
  const char* const strong_pgd = "epsilon = 0.1\nstep_size = 0.02\nsteps = 20";
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", strong_pgd), square = make<Attack>(CFAMC_KIND_ATTACK, "square", kSquare);
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8");
  cfamc::test::TempDir dir;
  const auto sequence_report = [&](bool quantised) {
    EvalServices services(*backbone, nullptr, {}, {{"aa", nullptr, {{"pgd", pgd.get()}, {"square", square.get()}}}}, dir.path());
    ClassifierOracle oracle(quantised);
    attack(services, "aa", oracle);
    return services.metrics()["attack_sequences"]["aa"];
  };
  const auto honest = sequence_report(false);
  INFO(honest.dump());
  CHECK(honest["gradient_masking_suspected"] == 0);

  const auto masked = sequence_report(true);
  const double clean = ClassifierOracle(true).accuracy(fashion().x);
  INFO(masked.dump());
  CHECK(clean > 0.6);
  CHECK(masked["pgd"]["robust_accuracy"].get<double>() == Approx(clean).margin(0.02));  // no gradient: PGD barely moves
  CHECK(masked["square"]["robust_accuracy"].get<double>() < clean - 0.05);
  CHECK(masked["gradient_masking_suspected"] == 1);
}
