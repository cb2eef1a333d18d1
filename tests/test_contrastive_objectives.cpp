// The adversarial contrastive objectives ACL (Jiang et al. 2020, dual-stream) and RoCL (Kim et al. 2020):
// their losses against a direct computation from the plugins' own tensors, the inputs their attacks
// perturb (really perturbed, through the host's PGD against the objective's oracle), the BatchNorm set
// ACL's attack runs, and a short whole run of each Fashion-MNIST run file.
#include "torch_catch.hpp"

#include <cfamc/contrastive.hpp>
#include <nlohmann/json.hpp>

#include <cmath>

#include "plugins/components.hpp"
#include "train/objective_oracle.hpp"
#include "make_component.hpp"
#include "objective_checks.hpp"
#include "support.hpp"
#include "tiny_run.hpp"

using namespace cfamc::host;
using cfamc::test::make;
using cfamc::test::all_equal;
using cfamc::test::attack_with_pgd;
using cfamc::test::running_means;
using Catch::Matchers::Contains;

namespace {

at::Tensor normalise(const at::Tensor& z) {
  return torch::nn::functional::normalize(z, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

// BatchNorm1d in eval mode from the named tensors `prefix`.{weight,bias,running_mean,running_var}.
at::Tensor batch_norm(const at::Tensor& x, const TensorMap& params, const TensorMap& buffers, const std::string& prefix) {
  return (x - buffers[prefix + ".running_mean"]) / (buffers[prefix + ".running_var"] + 1e-5).sqrt() *
             params[prefix + ".weight"] +
         params[prefix + ".bias"];
}

// ACL's projector written out from its tensors: Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN, BatchNorm set `branch`.
at::Tensor acl_projector(const Objective& acl, const at::Tensor& h, int branch) {
  const TensorMap params = acl.tensors(CFAMC_ROLE_PARAMETER), buffers = acl.tensors(CFAMC_ROLE_BUFFER);
  at::Tensor x = h;
  for (int layer = 0; layer < 3; ++layer) {
    const std::string linear = "projector.linear." + std::to_string(layer);
    x = x.matmul(params[linear + ".weight"].t());
    if (layer == 0) x = x + params[linear + ".bias"];
    x = batch_norm(x, params, buffers, "projector.norm." + std::to_string(layer) + "." + std::to_string(branch));
    if (layer < 2) x = x.relu();
  }
  return normalise(x);
}

// NT-Xent of the pair (x1, x2) through the backbone and ACL's projector, both in BatchNorm set `branch`.
at::Tensor acl_pair(const Backbone& backbone, const Objective& acl, const at::Tensor& x1, const at::Tensor& x2,
                    int branch) {
  return cfamc::nt_xent(acl_projector(acl, backbone.forward(torch::cat({x1, x2}), branch), branch), 2, 0.5);
}

// Makes the adversarial BatchNorm set differ from the clean one everywhere, so that a loss computed with the
// wrong set gives a different value.
void distinguish_branch_1(Component& component) {
  torch::NoGradGuard no_grad;
  for (auto& item : component.tensors(CFAMC_ROLE_PARAMETER)) {
    const std::string& name = item.key();
    const bool branch_1 = name.find(".1.weight") != std::string::npos || name.find(".1.bias") != std::string::npos;
    if (branch_1 && item.value().dim() == 1) item.value().add_(0.3);
  }
}

struct AclSetup {
  AclSetup()
      : backbone(make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8\nbranches = 2")),
        acl(make<Objective>(CFAMC_KIND_OBJECTIVE, "acl", "hidden_dim = 16\nprojection_dim = 12", backbone->feature_dim())) {
    for (const char* view : {"view1", "view2"}) clean.insert(view, torch::rand({6, 3, 8, 8}));
    for (const char* view : {"view1", "view2"}) adversarial.insert(view, (clean[view] + 0.03).clamp(0, 1));
  }
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> acl;
  TensorMap clean, adversarial;
};

}  // namespace

TEST_CASE("acl: training loss is 1/2 [NT-Xent(clean, set 0) + NT-Xent(adv, set 1)]", "[acl]") {
  AclSetup s;
  distinguish_branch_1(*s.backbone);
  distinguish_branch_1(*s.acl);
  s.backbone->set_training(false);
  s.acl->set_training(false);
  torch::NoGradGuard no_grad;
  const LossResult result = s.acl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_TRAIN);
  const at::Tensor clean = acl_pair(*s.backbone, *s.acl, s.clean["view1"], s.clean["view2"], 0);
  const at::Tensor adversarial = acl_pair(*s.backbone, *s.acl, s.adversarial["view1"], s.adversarial["view2"], 1);
  CHECK(result.loss.item<double>() == Approx(0.5 * (clean + adversarial).item<double>()).epsilon(1e-5));
  CHECK(result.scalars["nt_xent_clean"].item<double>() == Approx(clean.item<double>()).epsilon(1e-5));
  CHECK(result.scalars["nt_xent_adv"].item<double>() == Approx(adversarial.item<double>()).epsilon(1e-5));
  // Falsifiable: the adversarial pair through the clean set gives another value.
  const at::Tensor wrong_set = acl_pair(*s.backbone, *s.acl, s.adversarial["view1"], s.adversarial["view2"], 0);
  CHECK(std::abs((wrong_set - adversarial).item<double>()) > 1e-3);
  // The attack maximises the adversarial pair's NT-Xent, in the adversarial set.
  const LossResult attack = s.acl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_ATTACK);
  CHECK(attack.loss.item<double>() == Approx(adversarial.item<double>()).epsilon(1e-5));
}

TEST_CASE("acl: the attack perturbs both views, through the adversarial BatchNorm set only", "[acl]") {
  AclSetup s;
  CHECK(s.acl->view_groups() == std::vector<std::string>{"views"});
  CHECK(s.acl->attacked_inputs() == std::vector<std::string>{"view1", "view2"});
  TensorMap candidate;
  for (const char* view : {"view1", "view2"}) candidate.insert(view, s.adversarial[view].clone().requires_grad_(true));
  s.backbone->set_training(true);
  s.acl->set_training(true);
  const auto set0 = running_means({s.backbone.get(), s.acl.get()}, 0), set1 = running_means({s.backbone.get(), s.acl.get()}, 1);
  REQUIRE(set0.size() == 3 + 3);  // convnet's three blocks, the projector's three layers
  s.acl->loss(*s.backbone, s.clean, candidate, CFAMC_PHASE_ATTACK).loss.backward();
  for (const char* view : {"view1", "view2"}) {
    INFO(view);
    REQUIRE(candidate[view].grad().defined());
    CHECK(candidate[view].grad().abs().sum().item<double>() > 0);
  }
  CHECK(all_equal(running_means({s.backbone.get(), s.acl.get()}, 0), set0));
  CHECK_FALSE(all_equal(running_means({s.backbone.get(), s.acl.get()}, 1), set1));

  s.backbone->set_training(false);
  s.acl->set_training(false);
  const TensorMap attacked = attack_with_pgd(*s.backbone, *s.acl, s.clean);
  REQUIRE(attacked.size() == 2);
  for (const char* view : {"view1", "view2"}) {
    INFO(view);
    const double moved = (attacked[view] - s.clean[view]).abs().max().item<double>();
    CHECK(moved > 1e-3);
    CHECK(moved <= 8.0 / 255 + 1e-6);
  }
}

TEST_CASE("acl: a backbone with one BatchNorm set is refused at the first loss", "[acl]") {
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8");
  auto acl = make<Objective>(CFAMC_KIND_OBJECTIVE, "acl", "hidden_dim = 16\nprojection_dim = 12", backbone->feature_dim());
  TensorMap clean;
  for (const char* view : {"view1", "view2"}) clean.insert(view, torch::rand({4, 3, 8, 8}));
  CHECK_THROWS_WITH(acl->loss(*backbone, clean, TensorMap(), CFAMC_PHASE_TRAIN), Contains("branches = 2"));
}

namespace {

struct RoclSetup {
  explicit RoclSetup(const std::string& options = "")
      : backbone(make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8")),
        rocl(make<Objective>(CFAMC_KIND_OBJECTIVE, "rocl", "hidden_dim = 24\nprojection_dim = 12\n" + options,
                             backbone->feature_dim())) {
    for (const char* view : {"view1", "view2"}) clean.insert(view, torch::rand({6, 3, 8, 8}));
    adversarial.insert("view1", (clean["view1"] - 0.03).clamp(0, 1));
    backbone->set_training(false);  // batch-independent features: the direct computation may batch differently
    rocl->set_training(false);
  }
  // L2-normalised projection of `x`: Linear, ReLU, Linear from the plugin's tensors.
  at::Tensor embed(const at::Tensor& x) const {
    const TensorMap p = rocl->tensors(CFAMC_ROLE_PARAMETER);
    const at::Tensor hidden = (backbone->forward(x, 0).matmul(p["projector.0.weight"].t()) + p["projector.0.bias"]).relu();
    return normalise(hidden.matmul(p["projector.2.weight"].t()) + p["projector.2.bias"]);
  }
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> rocl;
  TensorMap clean, adversarial;
};

// RoCL's NT-Xent as its reference code writes it, for V views of n images: over the Vn x Vn similarity
// matrix (its second factor detached when `detach_columns`, as the reference's pairwise_similarity does), the
// -log softmax of every off-diagonal block's diagonal (view a's row against view b's positive), summed, over
// Vn. For two views that is SimCLR's loss; for three, twice the loss with a row's positives averaged.
at::Tensor reference_nt_xent(const std::vector<at::Tensor>& views, double t, bool detach_columns = false) {
  const at::Tensor z = torch::cat(views);
  const int64_t n = views.front().size(0), v = static_cast<int64_t>(views.size());
  const at::Tensor e = (z.matmul(detach_columns ? z.detach().t() : z.t()) / t).exp() * (1 - torch::eye(v * n));
  const at::Tensor nll = -(e / (e.sum(1, true) + 1e-8) + 1e-8).log();  // the reference's guards against log(0)
  at::Tensor total = torch::zeros({});
  for (int64_t a = 0; a < v; ++a)
    for (int64_t b = 0; b < v; ++b)
      if (a != b) total = total + nll.slice(0, a * n, (a + 1) * n).slice(1, b * n, (b + 1) * n).diagonal().sum();
  return total / static_cast<double>(v * n);
}

}  // namespace

TEST_CASE("rocl: attack loss is NT-Xent(adv(v1), v2), training adds the third view and 1/256 NT-Xent(adv, v2)",
          "[rocl]") {
  RoclSetup s;
  CHECK(s.rocl->attacked_inputs() == std::vector<std::string>{"view1"});
  torch::NoGradGuard no_grad;
  const at::Tensor v1 = s.embed(s.clean["view1"]), v2 = s.embed(s.clean["view2"]), adv = s.embed(s.adversarial["view1"]);
  const double attack = cfamc::nt_xent(torch::cat({adv, v2}), 2, 0.5).item<double>();
  CHECK(s.rocl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_ATTACK).loss.item<double>() ==
        Approx(attack).epsilon(1e-5));
  const double three = reference_nt_xent({v1, v2, adv}, 0.5).item<double>();
  const LossResult train = s.rocl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_TRAIN);
  CHECK(train.loss.item<double>() == Approx(three + attack / 256).epsilon(1e-5));
  CHECK(train.scalars["nt_xent"].item<double>() == Approx(three).epsilon(1e-5));
  CHECK(train.scalars["nt_xent_adv_v2"].item<double>() == Approx(attack).epsilon(1e-5));
  // Falsifiable: the three-view term is not the pair term under another name.
  CHECK(std::abs(three - attack) > 1e-3);
}

TEST_CASE("rocl: reference_detached_similarity gives the reference's one-sided gradient, the same loss", "[rocl]") {
  for (const bool detached : {false, true}) {
    INFO("detached " << detached);
    torch::manual_seed(0);  // the same inputs and network for both
    RoclSetup s(detached ? "reference_detached_similarity = true" : "");
    TensorMap candidate;
    candidate.insert("view1", s.adversarial["view1"].clone().requires_grad_(true));
    const at::Tensor loss = s.rocl->loss(*s.backbone, s.clean, candidate, CFAMC_PHASE_TRAIN).loss;
    const at::Tensor grad = torch::autograd::grad({loss}, {candidate["view1"]})[0];
    // The same loss written out, differentiated with respect to the same input.
    const at::Tensor adv_input = s.adversarial["view1"].clone().requires_grad_(true);
    const at::Tensor v1 = s.embed(s.clean["view1"]), v2 = s.embed(s.clean["view2"]), adv = s.embed(adv_input);
    const at::Tensor expected =
        reference_nt_xent({v1, v2, adv}, 0.5, detached) + reference_nt_xent({adv, v2}, 0.5, detached) / 256;
    CHECK(loss.item<double>() == Approx(expected.item<double>()).epsilon(1e-5));
    const at::Tensor expected_grad = torch::autograd::grad({expected}, {adv_input}, {}, /*retain_graph=*/true)[0];
    INFO("max |grad| " << grad.abs().max().item<double>() << ", max difference "
                       << (grad - expected_grad).abs().max().item<double>());
    CHECK(torch::allclose(grad, expected_grad, 1e-3, 1e-7));
    if (detached) {  // falsifiable: the one-sided gradient is not the full one
      const at::Tensor full = torch::autograd::grad({reference_nt_xent({v1, v2, adv}, 0.5) +
                                                     reference_nt_xent({adv, v2}, 0.5) / 256},
                                                    {adv_input})[0];
      CHECK_FALSE(torch::allclose(grad, full, 1e-3, 1e-7));
    }
  }
}

TEST_CASE("rocl: the attack perturbs view 1 only, and its loss depends on it", "[rocl]") {
  RoclSetup s;
  TensorMap candidate;
  candidate.insert("view1", s.adversarial["view1"].clone().requires_grad_(true));
  s.rocl->loss(*s.backbone, s.clean, candidate, CFAMC_PHASE_ATTACK).loss.backward();
  REQUIRE(candidate["view1"].grad().defined());
  CHECK(candidate["view1"].grad().abs().sum().item<double>() > 0);
  const TensorMap attacked = attack_with_pgd(*s.backbone, *s.rocl, s.clean);
  REQUIRE(attacked.keys() == std::vector<std::string>{"view1"});
  const double moved = (attacked["view1"] - s.clean["view1"]).abs().max().item<double>();
  CHECK(moved > 1e-3);
  CHECK(moved <= 8.0 / 255 + 1e-6);
}

TEST_CASE("acl and rocl: a short run of each Fashion-MNIST run file finishes with a finite loss", "[acl][rocl][run]") {
  for (const char* config : {"acl_fashion_mnist", "rocl_fashion_mnist"}) {
    INFO(config);
    cfamc::test::TempDir dir;
    const auto out = cfamc::test::run_host(
        "--config " + std::string(CFAMC_SOURCE_DIR) + "/configs/" + config + ".toml --set run.dir=" +
        dir.path().string() + " --set run.device=cpu --set data.train_subset=256 --set data.test_subset=200" +
        " --set train.batch_size=64 --set train.log_every=1 --set evaluate.0.epochs=1" +
        " --set evaluate.0.robust_max_images=20 --unset evaluate.0.control --set run.tensorboard=false");
    INFO(out.output);
    REQUIRE(out.exit_code == 0);
    const auto lines = cfamc::test::read_lines(dir.path() / "metrics.jsonl");
    REQUIRE(lines.size() == 4);
    for (const auto& line : lines) CHECK(std::isfinite(line["loss"].get<double>()));
    CHECK(lines.back().contains("nt_xent_adv") == (std::string(config) == "acl_fashion_mnist"));
  }
}
