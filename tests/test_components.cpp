// Every plugin kind driven by the host through its C table, with real plugins and real tensors:
// backbone forward/backward, objective loss reaching the backbone, attacks against an oracle, an
// evaluator using host services, and errors thrown inside plugins.
#include "torch_catch.hpp"

#include "config/options.hpp"
#include <ATen/CPUGeneratorImpl.h>

#include "augment/views.hpp"
#include "data/datasets.hpp"
#include "eval/eval_services.hpp"
#include "failure.hpp"
#include "plugins/components.hpp"
#include "plugins/tensor_handle.hpp"
#include "train/objective_oracle.hpp"
#include "fashion_classifier.hpp"
#include "make_component.hpp"
#include "support.hpp"

using namespace cfamc::host;
using cfamc::test::make;
using Catch::Matchers::Contains;

namespace {

std::unique_ptr<Backbone> convnet(const std::string& toml = "width = 8") {
  return make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", toml);
}

int64_t count(const std::vector<at::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

// A convnet, a small SimCLR head and a minibatch of two views, view 2 being the one attacks perturb.
struct SimclrAttackSetup {
  explicit SimclrAttackSetup(int64_t batch)
      : backbone(convnet()),
        simclr(make<Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8",
                               backbone->feature_dim())) {
    clean.insert("view1", torch::rand({batch, 3, 8, 8}));
    clean.insert("view2", torch::rand({batch, 3, 8, 8}));
    attacked.insert("view2", clean["view2"]);
  }
  // The loss the attacks maximise, at `view2` (the clean one by default).
  double attack_loss(const TensorMap& view2) const {
    torch::NoGradGuard no_grad;
    return simclr->loss(*backbone, clean, view2, CFAMC_PHASE_ATTACK).loss.item<double>();
  }

  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> simclr;
  TensorMap clean, attacked;
};

}  // namespace

TEST_CASE("convnet: output shape, parameter count, gradients reach every parameter", "[backbone]") {
  auto backbone = convnet("width = 8");
  CHECK(backbone->feature_dim() == 32);
  // conv 3x3 weights 3*8*9 + 8*16*9 + 16*32*9, BatchNorm weight and bias 2*(8+16+32)
  CHECK(count(backbone->parameters()) == 216 + 1152 + 4608 + 112);
  const at::Tensor x = torch::rand({4, 3, 16, 16});
  const at::Tensor features = backbone->forward(x);
  REQUIRE(features.sizes() == at::IntArrayRef({4, 32}));
  features.pow(2).sum().backward();
  for (const auto& p : backbone->parameters()) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().abs().sum().item<double>() > 0);
  }
}

TEST_CASE("convnet: BatchNorm branches are separate sets, chosen per forward", "[backbone]") {
  auto backbone = convnet("width = 8\nbranches = 2");
  CHECK(backbone->num_branches() == 2);
  CHECK(count(backbone->parameters()) == 216 + 1152 + 4608 + 2 * 112);
  auto running_mean = [&](int branch) {
    const TensorMap buffers = backbone->tensors(CFAMC_ROLE_BUFFER);
    const std::string name = "bn0." + std::to_string(branch) + ".running_mean";
    REQUIRE(buffers.contains(name));
    return buffers[name].clone();
  };
  const at::Tensor before0 = running_mean(0), before1 = running_mean(1);
  backbone->set_training(true);
  backbone->forward(torch::rand({4, 3, 8, 8}), 1);
  CHECK(torch::equal(running_mean(0), before0));
  CHECK_FALSE(torch::equal(running_mean(1), before1));
  CHECK_THROWS_WITH(backbone->forward(torch::rand({2, 3, 8, 8}), 2), Contains("no BatchNorm branch 2"));
}

TEST_CASE("convnet: normalisation inside and bad inputs are errors", "[backbone]") {
  CHECK_THROWS_WITH(convnet("mean = [0.5]\nstd = [0.5]"), Contains("one value per input channel"));
  auto normalised = convnet("width = 4\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]");
  CHECK(normalised->tensors(CFAMC_ROLE_BUFFER).contains("normalise.mean"));
  try {
    normalised->forward(torch::rand({2, 1, 8, 8}));
    FAIL("a one-channel image went through a three-channel backbone");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("plugin 'convnet' (convnet): convnet: expected float images [N, 3, H, W]"));
  }
}

TEST_CASE("the same seed gives the same initial weights", "[backbone]") {
  auto a = convnet(), b = convnet();
  const auto pa = a->parameters(), pb = b->parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) CHECK(torch::equal(pa[i], pb[i]));
}

TEST_CASE("simclr: views split, loss has a graph reaching backbone and head", "[objective]") {
  auto backbone = convnet();
  auto simclr = make<Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8",
                                backbone->feature_dim());
  CHECK(simclr->view_groups() == std::vector<std::string>{"views"});
  CHECK(simclr->attacked_inputs() == std::vector<std::string>{"view2"});
  TensorMap views;
  views.insert("views", torch::rand({2 * 6, 3, 8, 8}));
  const TensorMap inputs = simclr->prepare(views, torch::arange(6));
  REQUIRE(inputs.size() == 2);
  CHECK(torch::equal(inputs["view2"], views["views"].slice(0, 6, 12)));

  const LossResult result = simclr->loss(*backbone, inputs, TensorMap(), CFAMC_PHASE_TRAIN);
  REQUIRE(result.loss.dim() == 0);
  CHECK(result.scalars.contains("nt_xent"));
  result.loss.backward();
  for (const auto& p : backbone->parameters()) CHECK(p.grad().defined());
  const auto head = simclr->parameters();
  REQUIRE_FALSE(head.empty());
  for (const auto& p : head) CHECK(p.grad().defined());
}

TEST_CASE("simclr: matching views give a lower loss than unrelated ones", "[objective]") {
  auto backbone = convnet();
  auto simclr = make<Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8",
                                backbone->feature_dim());
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::rand({16, 3, 8, 8});
  TensorMap same, different;
  same.insert("view1", x);
  same.insert("view2", x);
  different.insert("view1", x);
  different.insert("view2", torch::rand({16, 3, 8, 8}));
  const double same_loss = simclr->loss(*backbone, same, TensorMap(), CFAMC_PHASE_TRAIN).loss.item<double>();
  const double different_loss = simclr->loss(*backbone, different, TensorMap(), CFAMC_PHASE_TRAIN).loss.item<double>();
  CHECK(same_loss < different_loss);
}

TEST_CASE("pgd against the objective's oracle: inside the ball and [0,1], loss not lower", "[attack]") {
  SimclrAttackSetup setup(8);
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 5");
  CHECK(pgd->replays() == 1);
  ObjectiveOracle oracle(*setup.simclr, *setup.backbone, setup.clean);
  const TensorMap adversarial = pgd->perturb(oracle.get(), setup.attacked);
  CHECK(oracle.calls() == 5);
  const at::Tensor delta = adversarial["view2"] - setup.clean["view2"];
  CHECK(delta.abs().max().item<double>() <= 8.0 / 255 + 1e-6);
  CHECK(adversarial["view2"].min().item<double>() >= 0);
  CHECK(adversarial["view2"].max().item<double>() <= 1);
  CHECK_FALSE(adversarial["view2"].requires_grad());
  CHECK(setup.attack_loss(adversarial) >= setup.attack_loss(setup.attacked));
}

TEST_CASE("pgd: zero steps from a zero start is the identity, and L2 stays in its ball", "[attack]") {
  SimclrAttackSetup setup(4);
  ObjectiveOracle oracle(*setup.simclr, *setup.backbone, setup.clean);
  const cfamc_oracle c_oracle = oracle.get();
  auto identity = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nrandom_start = false");
  CHECK(torch::equal(identity->perturb(c_oracle, setup.attacked)["view2"], setup.clean["view2"]));

  auto l2 = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3\nnorm = \"l2\"\nepsilon = 0.5\nstep_size = 0.2");
  const at::Tensor delta = l2->perturb(c_oracle, setup.attacked)["view2"] - setup.clean["view2"];
  CHECK(delta.flatten(1).norm(2, 1).max().item<double>() <= 0.5 + 1e-5);
  CHECK(delta.abs().max().item<double>() > 0);
}

TEST_CASE("fgsm and fgsm_rs stay in the ball and [0,1] and do not lower the loss", "[attack]") {
  SimclrAttackSetup setup(8);
  for (const char* name : {"fgsm", "fgsm_rs"}) {
    INFO(name);
    auto attack = make<Attack>(CFAMC_KIND_ATTACK, name, "epsilon = \"4/255\"");
    ObjectiveOracle oracle(*setup.simclr, *setup.backbone, setup.clean);
    const TensorMap adversarial = attack->perturb(oracle.get(), setup.attacked);
    CHECK(oracle.calls() == 1);
    const at::Tensor view2 = adversarial["view2"];
    CHECK((view2 - setup.clean["view2"]).abs().max().item<double>() <= 4.0 / 255 + 1e-6);
    CHECK(view2.min().item<double>() >= 0);
    CHECK(view2.max().item<double>() <= 1);
    CHECK(setup.attack_loss(adversarial) >= setup.attack_loss(setup.attacked));
  }
}

TEST_CASE("pgd restarts keep, per sample, the run with the highest loss", "[attack]") {
  // Zero steps from a random start: each restart is one random point. With the same seed, the first
  // restart equals the single run, so per sample the best of 8 is at least as strong, and mostly stronger.
  const at::Tensor x = torch::full({64, 1, 2, 2}, 0.5);
  TensorMap inputs;
  inputs.insert("x", x);
  const auto loss = [](void*, const cfamc_named_tensors* in, cfamc_tensor** out) -> cfamc_error* {
    *out = make_handle((to_map(in)["x"] - 0.5).pow(2).flatten(1).sum(1));
    return nullptr;
  };
  const cfamc_oracle oracle{sizeof(cfamc_oracle), nullptr, loss, nullptr, nullptr};
  const auto per_sample = [&](const at::Tensor& adv) { return (adv - 0.5).pow(2).flatten(1).sum(1); };
  auto once = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nepsilon = 0.1");
  auto eight = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nepsilon = 0.1\nrestarts = 8");
  const at::Tensor single = per_sample(once->perturb(oracle, inputs)["x"]);
  const at::Tensor best = per_sample(eight->perturb(oracle, inputs)["x"]);
  CHECK((best >= single).all().item<bool>());
  CHECK((best > single).to(torch::kDouble).mean().item<double>() > 0.5);
}

TEST_CASE("free: the perturbation persists across replays and minibatches and follows the gradient", "[attack]") {
  auto free = make<Attack>(CFAMC_KIND_ATTACK, "free", "epsilon = 0.1\nstep_size = 0.04\nreplays = 3");
  CHECK(free->replays() == 3);
  CHECK(free->observes());
  const cfamc_oracle unused{sizeof(cfamc_oracle), nullptr, nullptr, nullptr, nullptr};
  const at::Tensor x = torch::full({2, 1, 2, 2}, 0.5);
  TensorMap inputs;
  inputs.insert("crops", x);
  CHECK(torch::equal(free->perturb(unused, inputs)["crops"], x));  // starts at zero
  TensorMap gradient;
  gradient.insert("crops", torch::ones_like(x));
  for (int replay = 0; replay < 3; ++replay) {
    free->perturb(unused, inputs);
    free->observe(gradient);
  }
  // Three steps of 0.04, clipped to 0.1.
  CHECK(torch::allclose(free->perturb(unused, inputs)["crops"], x + 0.1));
  const TensorMap state = free->tensors(CFAMC_ROLE_STATE);
  REQUIRE(state.contains("delta"));
  CHECK(torch::allclose(state["delta"], torch::full_like(x, 0.1)));
  // A new minibatch near the top of [0,1]: the carried delta is re-projected onto the box.
  TensorMap next;
  next.insert("crops", torch::full({2, 1, 2, 2}, 0.95));
  CHECK(free->perturb(unused, next)["crops"].max().item<double>() <= 1.0);
  CHECK(torch::allclose(free->tensors(CFAMC_ROLE_STATE)["delta"], torch::full_like(x, 0.05)));
}

TEST_CASE("APGD is at least as strong as PGD-20 on a small trained classifier", "[attack][apgd]") {
  // The shared Fashion-MNIST classifier (fashion_classifier.hpp), attacked at eps 0.1.
  const cfamc::test::FashionClassifier& c = cfamc::test::fashion();
  cfamc::test::ClassifierOracle classifier(false);
  const cfamc_oracle oracle = classifier.get();
  const at::Tensor& x_test = c.x;
  TensorMap inputs;
  inputs.insert("x", x_test);
  const auto accuracy = [&](const at::Tensor& x) { return c.accuracy(x); };
  const double clean = accuracy(x_test);
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "epsilon = 0.1\nstep_size = 0.025\nsteps = 20");
  auto apgd = make<Attack>(CFAMC_KIND_ATTACK, "apgd", "epsilon = 0.1\nsteps = 50");
  auto apgd_t = make<Attack>(CFAMC_KIND_ATTACK, "apgd", "epsilon = 0.1\nsteps = 50\nloss = \"dlr_targeted\"\ntarget_classes = 3");
  const at::Tensor adv_pgd = pgd->perturb(oracle, inputs)["x"];
  const at::Tensor adv_apgd = apgd->perturb(oracle, inputs)["x"];
  const at::Tensor adv_apgd_t = apgd_t->perturb(oracle, inputs)["x"];
  for (const at::Tensor& adv : {adv_pgd, adv_apgd, adv_apgd_t}) {
    CHECK((adv - x_test).abs().max().item<double>() <= 0.1 + 1e-6);
    CHECK(adv.min().item<double>() >= 0);
    CHECK(adv.max().item<double>() <= 1);
  }
  const double robust_pgd = accuracy(adv_pgd), robust_apgd = accuracy(adv_apgd), robust_apgd_t = accuracy(adv_apgd_t);
  INFO("clean " << clean << ", PGD-20 " << robust_pgd << ", APGD-CE " << robust_apgd << ", APGD-T " << robust_apgd_t);
  CHECK(clean > 0.7);
  CHECK(robust_pgd < clean);
  CHECK(robust_apgd <= robust_pgd);
  CHECK(robust_apgd_t < clean);
}

TEST_CASE("a plain C plugin works on host tensors through DLPack", "[attack][dlpack]") {
  auto shift = make<Attack>(CFAMC_KIND_ATTACK, "c_shift", "epsilon = 0.25");
  // A non-contiguous input: the plugin must honour strides.
  const at::Tensor x = torch::rand({3, 2, 4, 5}).transpose(2, 3);
  TensorMap inputs;
  inputs.insert("x", x);
  const cfamc_oracle no_oracle{sizeof(cfamc_oracle), nullptr, nullptr, nullptr, nullptr};
  const at::Tensor out = shift->perturb(no_oracle, inputs)["x"];
  CHECK(out.sizes() == x.sizes());
  CHECK(torch::allclose(out, (x + 0.25).clamp(0, 1)));
}

TEST_CASE("knn through the evaluator services reports accuracy of a separable problem", "[evaluator]") {
  auto backbone = convnet();
  auto knn = make<Evaluator>(CFAMC_KIND_EVALUATOR, "knn", "k = 5\nbatch_size = 16", backbone->feature_dim());
  // Two classes that differ in colour: red-dominant and green-dominant images.
  auto images = [](int64_t n, int64_t cls) {
    at::Tensor x = torch::randint(0, 60, {n, 3, 8, 8}, torch::kUInt8);
    x.select(1, cls).add_(180);
    return x;
  };
  auto split = [&](int64_t n) {
    return DatasetSplit{torch::cat({images(n, 0), images(n, 1)}),
                        torch::cat({torch::zeros({n}, torch::kLong), torch::ones({n}, torch::kLong)})};
  };
  cfamc::test::TempDir dir;
  EvalServices services(*backbone, nullptr, {{"train", split(40)}, {"test", split(20)}}, {}, dir.path());
  backbone->set_training(true);
  knn->evaluate(*services.get());
  REQUIRE(services.metrics().contains("accuracy"));
  const double accuracy = services.metrics()["accuracy"].get<double>();
  CHECK(accuracy >= 0.9);
  CHECK(accuracy <= 1.0);
}

TEST_CASE("linear_probe and multicrop learn a separable problem, multicrop averages view groups", "[evaluator]") {
  auto backbone = convnet();
  auto images = [](int64_t n, int64_t cls) {
    at::Tensor x = torch::randint(0, 60, {n, 3, 8, 8}, torch::kUInt8);
    x.select(1, cls).add_(180);
    return x;
  };
  auto split = [&](int64_t n) {
    return DatasetSplit{torch::cat({images(n, 0), images(n, 1)}),
                        torch::cat({torch::zeros({n}, torch::kLong), torch::ones({n}, torch::kLong)})};
  };
  ViewRecipe crops = view_recipe_defaults("eval_crops");
  crops.name = "eval_crops";
  crops.count = 3;
  crops.size = 8;
  at::Generator generator = at::detail::createCPUGenerator(5);
  int64_t view_calls = 0;
  const auto view_maker = [&](const std::string& group, const at::Tensor& batch) {
    CHECK(group == "eval_crops");
    ++view_calls;
    return make_views(crops, batch, generator);
  };
  cfamc::test::TempDir dir;
  const std::string options = "feature = \"backbone\"\nepochs = 30\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 20";
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3\nepsilon = \"2/255\"");
  for (const char* name : {"linear_probe", "multicrop"}) {
    INFO(name);
    view_calls = 0;
    auto evaluator = make<Evaluator>(CFAMC_KIND_EVALUATOR, name, options, backbone->feature_dim());
    EvalServices services(*backbone, nullptr, {{"train", split(40)}, {"test", split(20)}}, {{"pgd", pgd.get()}},
                          dir.path(), view_maker);
    evaluator->evaluate(*services.get());
    const double clean = services.metrics()["accuracy"].get<double>();
    CHECK(clean >= 0.9);
    CHECK(services.metrics().contains("train_accuracy"));
    // Robust accuracy end to end; for multicrop the attack reaches through the views and their mean.
    const double robust = services.metrics()["robust_accuracy"]["pgd"].get<double>();
    CHECK(robust >= 0.0);
    CHECK(robust <= 1.0);
    if (std::string(name) == "multicrop") CHECK(view_calls == 2 + 3 + 1);  // train, test; 3 PGD steps; the check
    else CHECK(view_calls == 0);
  }
}

TEST_CASE("evaluator services: attacks by id, nested reports, artifact paths", "[evaluator]") {
  auto backbone = convnet();
  auto shift = make<Attack>(CFAMC_KIND_ATTACK, "c_shift", "epsilon = 0.5");
  cfamc::test::TempDir dir;
  EvalServices services(*backbone, nullptr, {}, {{"shift", shift.get()}}, dir.path());
  const cfamc_eval_services* s = services.get();
  REQUIRE(s->num_attacks(s->self) == 1);
  CHECK(std::string(s->attack_id(s->self, 0)) == "shift");
  cfamc_tensor x{torch::zeros({1, 3, 2, 2})};
  cfamc_tensor* out = nullptr;
  const cfamc_oracle no_oracle{sizeof(cfamc_oracle), nullptr, nullptr, nullptr, nullptr};
  REQUIRE(s->attack(s->self, "shift", &no_oracle, &x, &out) == nullptr);
  CHECK(adopt(out).min().item<double>() == Approx(0.5));
  cfamc_error* error = s->attack(s->self, "nope", &no_oracle, &x, &out);
  REQUIRE(error != nullptr);
  CHECK_THAT(host_api()->error_message(error), Contains("no attack 'nope'"));
  host_api()->error_release(error);
  s->report(s->self, "robust_accuracy/shift", 0.25);
  CHECK(services.metrics()["robust_accuracy"]["shift"].get<double>() == Approx(0.25));
  char path[512];
  s->artifact_path(s->self, "curve.csv", path, sizeof(path));
  CHECK(std::string(path) == (dir.path() / "curve.csv").string());
  cfamc_tensor* images = nullptr;
  cfamc_tensor* labels = nullptr;
  error = s->dataset(s->self, "validation", &images, &labels);
  REQUIRE(error != nullptr);
  host_api()->error_release(error);
}

TEST_CASE("exceptions inside plugins come back as errors naming the plugin", "[abi]") {
  try {
    make<Backbone>(CFAMC_KIND_BACKBONE, "throws_in_create");
    FAIL("create did not fail");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("plugin 'throws_in_create'"));
    CHECK_THAT(std::string(e.what()), Contains("boom in the constructor"));
  }
  auto throws = make<Backbone>(CFAMC_KIND_BACKBONE, "throws_in_forward");
  CHECK_THROWS_WITH(throws->forward(torch::rand({1, 3, 4, 4})), Contains("boom in forward"));
  auto throws_int = make<Evaluator>(CFAMC_KIND_EVALUATOR, "throws_int");
  auto backbone = convnet();
  cfamc::test::TempDir dir;
  EvalServices services(*backbone, nullptr, {}, {}, dir.path());
  CHECK_THROWS_WITH(throws_int->evaluate(*services.get()), Contains("unknown exception"));
}

TEST_CASE("on a CUDA device: backbone, objective and attack keep tensors on the GPU", "[cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device here: this test checks nothing on this machine");
    return;
  }
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8", 0, "cuda:0");
  auto simclr = make<Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8",
                                backbone->feature_dim(), "cuda:0");
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3", 0, "cuda:0");
  for (const auto& p : backbone->parameters()) CHECK(p.is_cuda());
  for (const auto& p : simclr->parameters()) CHECK(p.is_cuda());
  TensorMap clean;
  clean.insert("view1", torch::rand({8, 3, 16, 16}, torch::kCUDA));
  clean.insert("view2", torch::rand({8, 3, 16, 16}, torch::kCUDA));
  TensorMap attacked;
  attacked.insert("view2", clean["view2"]);
  ObjectiveOracle oracle(*simclr, *backbone, clean);
  const TensorMap adversarial = pgd->perturb(oracle.get(), attacked);
  REQUIRE(adversarial["view2"].is_cuda());
  CHECK((adversarial["view2"] - clean["view2"]).abs().max().item<double>() <= 8.0 / 255 + 1e-6);
  const LossResult result = simclr->loss(*backbone, clean, adversarial, CFAMC_PHASE_TRAIN);
  REQUIRE(result.loss.is_cuda());
  result.loss.backward();
  for (const auto& p : backbone->parameters()) CHECK(p.grad().defined());
}
