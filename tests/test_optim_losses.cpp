// Optimisers and schedules against hand computations; EMP-SSL's coding rate and invariance and SimCLR's
// NT-Xent against closed forms and direct computations; backbone shapes and parameter counts.
#include "torch_catch.hpp"

#include "coding_rate.hpp"
#include "config/options.hpp"
#include <cfamc/contrastive.hpp>
#include "plugins/components.hpp"
#include "support.hpp"
#include "train/optimizer.hpp"
#include "train/schedule.hpp"

using namespace cfamc::host;

TEST_CASE("one LARS step matches a hand computation", "[optim]") {
  const auto f64 = torch::kDouble;
  at::Tensor w = torch::tensor({3.0, 4.0}, f64).view({1, 2}).requires_grad_(true);  // |w| = 5
  at::Tensor b = torch::tensor({1.0}, f64).requires_grad_(true);                    // 1-D: excluded
  w.mutable_grad() = torch::tensor({0.6, 0.8}, f64).view({1, 2});                    // |g| = 1
  b.mutable_grad() = torch::tensor({0.5}, f64);
  OptimizerConfig config = train_defaults().optimizer;
  config.kind = "lars";
  config.momentum = 0.9;
  config.nesterov = true;
  config.weight_decay = 1e-4;
  config.lars_eta = 0.005;
  Optimizer optimizer(config, {{"w", w}, {"b", b}});
  const double lr = 0.3;
  optimizer.step(lr);
  // local = eta |w| / (|g| + wd |w| + eps) = 0.025 / 1.0005; min(local / lr, 1) = local / 0.3.
  const double local = 0.005 * 5 / (1 + 1e-4 * 5 + 1e-8) / lr;
  const double g0 = (0.6 + 1e-4 * 3) * local, g1 = (0.8 + 1e-4 * 4) * local;
  // First step: buffer = g; Nesterov: update = g + 0.9 * buffer = 1.9 g.
  CHECK(w[0][0].item<double>() == Approx(3.0 - lr * 1.9 * g0).epsilon(1e-12));
  CHECK(w[0][1].item<double>() == Approx(4.0 - lr * 1.9 * g1).epsilon(1e-12));
  CHECK(b[0].item<double>() == Approx(1.0 - lr * 1.9 * 0.5).epsilon(1e-12));  // plain SGD, no decay
}

// Every optimiser updates all weights with a few `_foreach_` calls: the result must be what each weight
// updated on its own gets, whatever its shape, including a zero weight (LARS leaves it unscaled), a 1-D one
// (LARS excludes it) and one without a gradient this step (left alone; not for AdamW, whose bias correction
// counts the optimiser's updates, not each weight's).
TEST_CASE("each optimiser updates many weights at once exactly as each weight on its own", "[optim]") {
  for (const char* kind : {"lars", "sgd", "adamw"}) {
    CAPTURE(kind);
    OptimizerConfig config = train_defaults().optimizer;
    config.kind = kind;
    config.momentum = 0.9;
    config.nesterov = true;
    config.weight_decay = 1e-3;
    config.lars_eta = 0.02;
    const std::vector<at::Tensor> start = {torch::randn({4, 3, 3, 3}), torch::zeros({5, 2}), torch::randn({6}),
                                           torch::randn({3, 7}), torch::randn({2, 2})};
    TensorMap together_map;
    std::vector<at::Tensor> together, alone;
    std::vector<std::unique_ptr<Optimizer>> singles;
    for (size_t i = 0; i < start.size(); ++i) {
      together.push_back(start[i].clone().requires_grad_(true));
      alone.push_back(start[i].clone().requires_grad_(true));
      together_map.insert("w" + std::to_string(i), together[i]);
      singles.push_back(std::make_unique<Optimizer>(config, TensorMap{{"w", alone[i]}}));
    }
    Optimizer joint(config, together_map);
    const bool skip_one = std::string(kind) != "adamw";
    for (int step = 0; step < 3; ++step) {
      for (size_t i = 0; i < start.size(); ++i) {
        if (skip_one && i == 4 && step == 1) continue;  // no gradient for this weight at this step
        const at::Tensor grad = torch::randn(start[i].sizes());
        together[i].mutable_grad() = grad.clone();
        alone[i].mutable_grad() = grad.clone();
        singles[i]->step(0.3);
      }
      if (skip_one && step == 1) together[4].mutable_grad() = at::Tensor();
      joint.step(0.3);
    }
    for (size_t i = 0; i < start.size(); ++i) {
      CAPTURE(i);
      CHECK(torch::allclose(together[i], alone[i], 1e-6, 1e-7));
      CHECK_FALSE(torch::equal(together[i], start[i]));
    }
  }
}

TEST_CASE("SGD with Nesterov momentum matches LibTorch's SGD over several steps", "[optim]") {
  torch::manual_seed(0);
  at::Tensor mine = torch::randn({5, 3}).requires_grad_(true);
  at::Tensor theirs = mine.detach().clone().requires_grad_(true);
  OptimizerConfig config = train_defaults().optimizer;
  config.kind = "sgd";
  config.momentum = 0.9;
  config.nesterov = true;
  config.weight_decay = 5e-4;
  Optimizer optimizer(config, {{"w", mine}});
  torch::optim::SGD reference({theirs}, torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(5e-4));
  for (int step = 0; step < 4; ++step) {
    const at::Tensor target = torch::randn({5, 3});
    optimizer.zero_grad();
    reference.zero_grad();
    (mine - target).pow(2).sum().backward();
    (theirs - target).pow(2).sum().backward();
    optimizer.step(0.1);
    reference.step();
  }
  CHECK(torch::allclose(mine, theirs, 1e-6, 1e-6));
}

TEST_CASE("AdamW matches LibTorch's AdamW over several steps", "[optim]") {
  torch::manual_seed(1);
  at::Tensor mine = torch::randn({4, 3}).requires_grad_(true);
  at::Tensor theirs = mine.detach().clone().requires_grad_(true);
  OptimizerConfig config = train_defaults().optimizer;
  config.kind = "adamw";
  config.weight_decay = 0.05;
  Optimizer optimizer(config, {{"w", mine}});
  torch::optim::AdamW reference({theirs}, torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
  for (int step = 0; step < 5; ++step) {
    const at::Tensor target = torch::randn({4, 3});
    optimizer.zero_grad();
    reference.zero_grad();
    (mine - target).pow(2).sum().backward();
    (theirs - target).pow(2).sum().backward();
    optimizer.step(1e-2);
    reference.step();
  }
  CHECK(torch::allclose(mine, theirs, 1e-6, 1e-6));
}

TEST_CASE("schedules: warm-up, cosine to min_lr, multistep", "[optim]") {
  ScheduleConfig cosine = train_defaults().schedule;
  CHECK(learning_rate(cosine, 1.0, 0, 100) == Approx(1.0));
  CHECK(learning_rate(cosine, 1.0, 50, 100) == Approx(0.5));
  CHECK(learning_rate(cosine, 1.0, 100, 100) == Approx(0.0).margin(1e-12));
  cosine.warmup_steps = 10;
  cosine.min_lr = 0.1;
  CHECK(learning_rate(cosine, 1.0, 0, 110) == Approx(0.1));
  CHECK(learning_rate(cosine, 1.0, 9, 110) == Approx(1.0));
  CHECK(learning_rate(cosine, 1.0, 60, 110) == Approx(0.55));
  ScheduleConfig multistep = train_defaults().schedule;
  multistep.kind = "multistep";
  multistep.milestones = {15, 20};
  CHECK(learning_rate(multistep, 0.01, 14, 25) == Approx(0.01));
  CHECK(learning_rate(multistep, 0.01, 15, 25) == Approx(0.001));
  CHECK(learning_rate(multistep, 0.01, 24, 25) == Approx(0.0001));
}

TEST_CASE("total coding rate: closed form, and both Gram forms agree", "[loss]") {
  // Z = the first B standard basis vectors of R^d: Z Z^T = I_B, so R = B/2 log(1 + d/(B eps)).
  const int64_t b = 4, d = 16;
  const double eps = 0.2;
  const at::Tensor z = torch::eye(d, torch::kDouble).slice(0, 0, b).unsqueeze(0);
  CHECK(cfamc::emp_ssl::total_coding_rate(z, eps).item<double>() == Approx(b / 2.0 * std::log(1 + d / (b * eps))));
  // B > d uses the d x d form; it must equal logdet computed directly.
  const at::Tensor wide = torch::nn::functional::normalize(torch::randn({2, 20, 6}, torch::kDouble),
                                                           torch::nn::functional::NormalizeFuncOptions().dim(2));
  const at::Tensor direct =
      0.5 * torch::logdet(torch::eye(6, torch::kDouble) + 6.0 / (20 * eps) * torch::matmul(wide.transpose(1, 2), wide));
  CHECK(torch::allclose(cfamc::emp_ssl::total_coding_rate(wide, eps), direct, 1e-10, 1e-10));
  const at::Tensor tall = wide.transpose(1, 2).contiguous();  // B = 6 < d = 20: the B x B form
  const at::Tensor direct_tall =
      0.5 * torch::logdet(torch::eye(20, torch::kDouble) + 20.0 / (6 * eps) * torch::matmul(tall.transpose(1, 2), tall));
  CHECK(torch::allclose(cfamc::emp_ssl::total_coding_rate(tall, eps), direct_tall, 1e-8, 1e-8));
}

TEST_CASE("invariance: identical crops give 1, two orthogonal crops 1/sqrt(2)", "[loss]") {
  const at::Tensor u = torch::tensor({1.0, 0.0}), v = torch::tensor({0.0, 1.0});
  CHECK(cfamc::emp_ssl::invariance(torch::stack({u, u, u}).view({3, 1, 2})).item<double>() == Approx(1.0));
  CHECK(cfamc::emp_ssl::invariance(torch::stack({u, v}).view({2, 1, 2})).item<double>() == Approx(1.0 / std::sqrt(2.0)));
}

TEST_CASE("NT-Xent equals a direct per-anchor computation", "[loss]") {
  const int64_t b = 5, d = 7;
  const double t = 0.5;
  const at::Tensor z = torch::nn::functional::normalize(torch::randn({2 * b, d}, torch::kDouble),
                                                        torch::nn::functional::NormalizeFuncOptions().dim(1));
  double expected = 0;
  for (int64_t i = 0; i < 2 * b; ++i) {
    const int64_t positive = (i + b) % (2 * b);
    double denominator = 0;
    for (int64_t k = 0; k < 2 * b; ++k)
      if (k != i) denominator += std::exp(z[i].dot(z[k]).item<double>() / t);
    expected += -std::log(std::exp(z[i].dot(z[positive]).item<double>() / t) / denominator);
  }
  CHECK(cfamc::nt_xent(z, 2, t).item<double>() == Approx(expected / (2 * b)).epsilon(1e-10));
}

namespace {

std::unique_ptr<Backbone> backbone(const std::string& name) {
  static const Registry registry = Registry::discover({CFAMC_PLUGIN_BUILD_DIR}, host_api());
  const ComponentInfo& info = registry.find(CFAMC_KIND_BACKBONE, name);
  return instantiate<Backbone>(registry, info,
                               ComponentSetup{name, resolve_options(toml::table{}, info.options, name, "test"), 1, "cpu", 0});
}

int64_t parameter_count(const Backbone& b) {
  int64_t n = 0;
  for (const auto& p : b.parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("ResNets: feature sizes and parameter counts of the known architectures", "[backbone]") {
  // torchvision's counts without the classifier, with the 3x3 CIFAR stem instead of the 7x7 one:
  // resnet18 11,689,512 - 513,000 - 9,408 + 1,728; resnet50 25,557,032 - 2,049,000 - 9,408 + 1,728.
  const auto r18 = backbone("resnet18");
  CHECK(parameter_count(*r18) == 11168832);
  CHECK(r18->feature_dim() == 512);
  const auto r50 = backbone("resnet50");
  CHECK(parameter_count(*r50) == 23500352);
  CHECK(r50->feature_dim() == 2048);
  torch::NoGradGuard no_grad;
  r18->set_training(false);
  CHECK(r18->forward(torch::rand({2, 3, 32, 32})).sizes() == at::IntArrayRef({2, 512}));
  const auto preact = backbone("preact_resnet18");
  CHECK(preact->forward(torch::rand({2, 3, 32, 32})).sizes() == at::IntArrayRef({2, 512}));
  // RobustBench's WideResNet-34-10 has 46,160,474 parameters with its 640 x 10 classifier.
  const auto wrn = backbone("wrn34_10");
  CHECK(parameter_count(*wrn) == 46160474 - 6410);
  CHECK(wrn->feature_dim() == 640);
  const auto v2 = backbone("resnet50v2");
  CHECK(v2->feature_dim() == 2048);
  CHECK(v2->forward(torch::rand({2, 3, 32, 32})).sizes() == at::IntArrayRef({2, 2048}));
}
