// Backbone stages (plugin ABI 1.3): every ResNet runs by stages and composes back to its forward, the copies of
// the last stage are parameters of their own under stable names, the encoder carries stages across the plugin
// boundary (second-order gradients included), and a backbone without stages, or built against ABI 1.0, gives
// clear errors while everything else works as before.
#include "torch_catch.hpp"

#include <algorithm>
#include <functional>
#include <map>

#include "config/options.hpp"
#include "eval/eval_services.hpp"
#include "failure.hpp"
#include "plugins/components.hpp"
#include "plugins/library.hpp"
#include "plugins/registry.hpp"
#include "support.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

const Registry& registry() {
  static const Registry instance = Registry::discover(
      {CFAMC_PLUGIN_BUILD_DIR, cfamc::test::test_plugin("stage_probe"), cfamc::test::test_plugin("abi10_backbone")},
      host_api());
  return instance;
}

template <class K>
std::unique_ptr<K> make(cfamc_kind kind, const std::string& name, const std::string& toml = "", int64_t feature_dim = 0,
                        StageLayout stages = {}) {
  const ComponentInfo& info = registry().find(kind, name);
  ComponentSetup setup{name, resolve_options(toml::parse(toml), info.options, name, "test"), 1234, "cpu", feature_dim,
                       std::move(stages)};
  return instantiate<K>(registry(), info, std::move(setup));
}

std::unique_ptr<Backbone> backbone(const std::string& name, const std::string& toml = "") {
  return make<Backbone>(CFAMC_KIND_BACKBONE, name, toml);
}

// The objective as the host makes it for a run on `b`: with the backbone's stages in its context.
std::unique_ptr<Objective> probe(const Backbone& b, const std::string& toml) {
  return make<Objective>(CFAMC_KIND_OBJECTIVE, "stage_probe", toml, b.feature_dim(), b.stages());
}

TensorMap views(const at::Tensor& x) {
  TensorMap clean;
  clean.insert("views", x);
  return clean;
}

// What Backbone::forward_stages and the objective's loss fail with.
std::string failure_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Failure& e) {
    return e.what();
  }
  return "(no failure)";
}

double max_difference(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

struct Variant {
  const char* name;
  std::vector<int64_t> channels;  // stages 0..S
};

}  // namespace

TEST_CASE("ResNets by stages: every variant composes to its forward, copy 0 is the forward", "[stages][backbone][resnet]") {
  const std::vector<Variant> variants = {{"resnet18", {3, 64, 128, 256, 512}},
                                         {"resnet50", {3, 256, 512, 1024, 2048}},
                                         {"preact_resnet18", {3, 64, 128, 256, 512}},
                                         {"resnet50v2", {3, 256, 512, 1024, 2048}},
                                         {"wrn34_10", {3, 160, 320, 640}}};
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::rand({2, 3, 8, 8});
  for (const auto& v : variants) {
    INFO(v.name);
    const auto b = backbone(v.name, "last_stage_copies = 2");
    b->set_training(false);
    const StageLayout layout = b->stages();
    const int32_t S = static_cast<int32_t>(v.channels.size()) - 1;
    CHECK(layout.count == S);
    CHECK(layout.copies == 2);
    CHECK(layout.channels == v.channels);
    const at::Tensor feature = b->forward(x);
    CHECK(torch::equal(b->forward_stages(x, 0, CFAMC_STAGE_FEATURE, 0), feature));
    const at::Tensor other = b->forward_stages(x, 0, CFAMC_STAGE_FEATURE, 1);
    CHECK(other.sizes() == feature.sizes());
    CHECK(max_difference(other, feature) > 1e-4);  // the other copy has parameters of its own
    for (int32_t k = 1; k <= S; ++k) {
      INFO("stage " << k);
      const at::Tensor stage = b->forward_stages(x, 0, k, 0);
      CHECK(stage.size(1) == v.channels[k]);
      CHECK(torch::allclose(b->forward_stages(stage, k, CFAMC_STAGE_FEATURE, 0), feature, 1e-4, 1e-5));
      const at::Tensor stage_of_copy = b->forward_stages(x, 0, k, 1);
      CHECK(torch::allclose(b->forward_stages(stage_of_copy, k, CFAMC_STAGE_FEATURE, 1), other, 1e-4, 1e-5));
      // Below the last stage the trunk is shared: the copy changes nothing there.
      if (k < S) CHECK(torch::equal(stage_of_copy, stage));
      if (k < S) CHECK(torch::allclose(b->forward_stages(stage, k, k + 1, 0), b->forward_stages(x, 0, k + 1, 0), 1e-4, 1e-5));
    }
  }
}

TEST_CASE("ResNets: copies of the last stage are parameters under stable names, copy 0 is the old network",
          "[stages][backbone][resnet]") {
  for (const char* name : {"resnet18", "preact_resnet18"}) {
    INFO(name);
    const auto one = backbone(name), three = backbone(name, "last_stage_copies = 3");
    CHECK(one->stages().copies == 1);
    const TensorMap params_one = one->tensors(CFAMC_ROLE_PARAMETER), params_three = three->tensors(CFAMC_ROLE_PARAMETER);
    // Copy 0 keeps the names (and the seeded values) of a network without copies: old checkpoints still load.
    std::vector<std::string> without_copies;
    for (const auto& item : params_three) {
      if (item.key().find("_copy") == std::string::npos) without_copies.push_back(item.key());
    }
    CHECK(without_copies == params_one.keys());
    for (const auto& item : params_one) CHECK(torch::equal(item.value(), params_three[item.key()]));
    for (const char* copy : {"layer4_copy1.0.conv1.weight", "layer4_copy2.1.conv2.weight", "layer4_copy2.0.shortcut.weight"}) {
      INFO(copy);
      CHECK(params_three.contains(copy));
    }
    CHECK(three->tensors(CFAMC_ROLE_BUFFER).contains("layer4_copy1.0.bn2.0.running_mean"));
    CHECK(params_three.contains("bn_final_copy2.0.weight") == (std::string(name) == "preact_resnet18"));
    CHECK_FALSE(torch::equal(params_three["layer4_copy1.0.conv1.weight"], params_three["layer4.0.conv1.weight"]));
    CHECK(three->export_tensors(0).keys() == one->export_tensors(0).keys());  // export writes copy 0 only

    // A feature of copy 1 trains copy 1 and the shared trunk, not copy 0.
    three->forward_stages(torch::rand({2, 3, 8, 8}), 0, CFAMC_STAGE_FEATURE, 1).square().sum().backward();
    CHECK(params_three["layer4_copy1.0.conv1.weight"].grad().abs().sum().item<double>() > 0);
    CHECK(params_three["layer3.0.conv1.weight"].grad().abs().sum().item<double>() > 0);
    CHECK_FALSE(params_three["layer4.0.conv1.weight"].grad().defined());
  }
  CHECK(backbone("wrn34_10", "last_stage_copies = 2")->tensors(CFAMC_ROLE_PARAMETER).contains("layer3_copy1.4.conv2.weight"));
  CHECK_THROWS_WITH(backbone("resnet18", "last_stage_copies = 0"), Contains("last_stage_copies must be at least 1"));
}

TEST_CASE("the encoder runs stages across the plugin boundary and reports them to the objective", "[stages][objective]") {
  const auto b = backbone("resnet18", "last_stage_copies = 2");
  b->set_training(false);
  const auto p = probe(*b, "split_stage = 2\ncopy = 1\ncheck_at_create = true");
  const at::Tensor x = torch::rand({3, 3, 8, 8});
  const LossResult result = p->loss(*b, views(x), TensorMap(), CFAMC_PHASE_TRAIN);
  CHECK(result.scalars["num_stages"].item<int64_t>() == 4);
  CHECK(result.scalars["num_stage_copies"].item<int64_t>() == 2);
  CHECK(result.scalars["split_channels"].item<int64_t>() == 128);
  // The same loss computed here, with the head the objective built in `create` from the stage's channels.
  const TensorMap head = p->tensors(CFAMC_ROLE_PARAMETER);
  REQUIRE(head["head.weight"].sizes() == at::IntArrayRef({1, 128}));
  const at::Tensor stage = b->forward_stages(x, 0, 2, 1);
  const at::Tensor feature = b->forward_stages(x, 0, CFAMC_STAGE_FEATURE, 1);
  const at::Tensor direct =
      feature.square().mean() + torch::linear(stage.mean({2, 3}), head["head.weight"], head["head.bias"]).mean();
  CHECK(result.loss.item<double>() == Approx(direct.item<double>()).epsilon(1e-5));

  // Arguments out of range come back as errors naming the objective and the backbone.
  const auto bad_copy = probe(*b, "copy = 2");
  const std::string copy_error = failure_of([&] { bad_copy->loss(*b, views(x), TensorMap(), CFAMC_PHASE_TRAIN); });
  CHECK_THAT(copy_error, Contains("plugin 'stage_probe'") && Contains("plugin 'resnet18'") && Contains("copy 2"));
  const auto bad_stage = probe(*b, "split_stage = 5");
  CHECK_THAT(failure_of([&] { bad_stage->loss(*b, views(x), TensorMap(), CFAMC_PHASE_TRAIN); }),
             Contains("plugin 'stage_probe'") && Contains("from stage 0 to stage 5") && Contains("stages 0..4"));
  CHECK_THAT(failure_of([&] { b->forward_stages(x, 3, 2, 0); }), Contains("the end must come after the start"));
  CHECK_THAT(failure_of([&] { probe(*b, "copy = 2\ncheck_at_create = true"); }), Contains("2 copies of its last stage"));
}

TEST_CASE("a backbone without stages fails the objective naming both plugins, or is refused in create",
          "[stages][objective]") {
  const auto convnet = backbone("convnet", "width = 8");
  CHECK(convnet->stages().count == 0);
  const auto p = probe(*convnet, "");
  const std::string error = failure_of([&] { p->loss(*convnet, views(torch::rand({2, 3, 8, 8})), TensorMap(), CFAMC_PHASE_TRAIN); });
  CHECK_THAT(error, Contains("plugin 'stage_probe'") && Contains("plugin 'convnet'") && Contains("offers no stages"));
  CHECK_THAT(failure_of([&] { probe(*convnet, "check_at_create = true"); }),
             Contains("plugin 'stage_probe'") && Contains("needs a backbone that runs by stages"));
  CHECK_THAT(failure_of([&] { convnet->forward_stages(torch::rand({2, 3, 8, 8}), 0, 1, 0); }),
             Contains("plugin 'convnet'") && Contains("offers no stages"));
}

TEST_CASE("a backbone plugin built against ABI 1.0 loads, trains and evaluates unchanged", "[stages][abi]") {
  const ComponentInfo& info = registry().find(CFAMC_KIND_BACKBONE, "abi10_means");
  CHECK(registry().owner(info)->abi_minor() == 0);
  const auto old = backbone("abi10_means");
  // Nothing beyond its table's struct_size is read: the traps there would offer stages or fail.
  CHECK(old->stages().count == 0);
  CHECK(old->export_tensors(0).keys() == std::vector<std::string>{"linear.weight", "linear.bias"});
  const auto p = probe(*old, "");
  CHECK_THAT(failure_of([&] { p->loss(*old, views(torch::rand({2, 3, 8, 8})), TensorMap(), CFAMC_PHASE_TRAIN); }),
             Contains("plugin 'stage_probe'") && Contains("plugin 'abi10_means'") && Contains("plugin ABI 1.0"));

  // Training: SimCLR through the encoder on a fixed batch; its loss falls.
  const auto simclr = make<Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8", old->feature_dim());
  TensorMap pair;
  pair.insert("view1", torch::rand({8, 3, 8, 8}));
  pair.insert("view2", (pair["view1"] + 0.05 * torch::randn({8, 3, 8, 8})).clamp(0, 1));
  std::vector<at::Tensor> params = old->parameters();
  for (const auto& t : simclr->parameters()) params.push_back(t);
  torch::optim::SGD sgd(params, torch::optim::SGDOptions(0.5));
  std::vector<double> losses;
  for (int step = 0; step < 30; ++step) {
    sgd.zero_grad();
    at::Tensor loss = simclr->loss(*old, pair, TensorMap(), CFAMC_PHASE_TRAIN).loss;
    loss.backward();
    losses.push_back(loss.item<double>());
    sgd.step();
  }
  CHECK(old->parameters()[0].grad().abs().sum().item<double>() > 0);
  CHECK(losses.back() < losses.front() - 0.05);

  // Evaluation: knn through the evaluator services on two colours.
  const auto images = [](int64_t n, int64_t cls) {
    at::Tensor x = torch::randint(0, 60, {n, 3, 8, 8}, torch::kUInt8);
    x.select(1, cls).add_(180);
    return x;
  };
  const auto split = [&](int64_t n) {
    return DatasetSplit{torch::cat({images(n, 0), images(n, 1)}),
                        torch::cat({torch::zeros({n}, torch::kLong), torch::ones({n}, torch::kLong)})};
  };
  auto knn = make<Evaluator>(CFAMC_KIND_EVALUATOR, "knn", "k = 5\nbatch_size = 16", old->feature_dim());
  cfamc::test::TempDir dir;
  EvalServices services(*old, nullptr, {{"train", split(40)}, {"test", split(20)}}, {}, dir.path());
  knn->evaluate(*services.get());
  CHECK(services.metrics()["accuracy"].get<double>() >= 0.9);
}

TEST_CASE("second-order gradients through the encoder across the plugin boundary match a direct computation",
          "[stages][objective]") {
  const auto b = backbone("resnet18", "last_stage_copies = 2");
  b->set_training(false);
  const at::Tensor x = torch::rand({2, 3, 8, 8});
  const TensorMap params = b->tensors(CFAMC_ROLE_PARAMETER);
  const std::vector<at::Tensor> weights = params.values();
  // d/dw of |d/dx sum f(x)^2|^2: the objective takes the input gradient with create_graph through the encoder.
  const auto through_objective = [&](int32_t copy) {
    const auto p = probe(*b, "penalty = true\nsplit_stage = 3\ncopy = " + std::to_string(copy));
    const at::Tensor penalty = p->loss(*b, views(x), TensorMap(), CFAMC_PHASE_TRAIN).loss;
    return torch::autograd::grad({penalty}, weights, {}, false, false, /*allow_unused=*/true);
  };
  // The same on copy 0 from the backbone's forward, called by the host without the objective or the encoder.
  const at::Tensor input = x.clone().requires_grad_(true);
  const at::Tensor g = torch::autograd::grad({b->forward(input).square().sum()}, {input}, {}, true, true)[0];
  const auto direct = torch::autograd::grad({g.square().sum()}, weights, {}, false, false, true);

  const auto copy0 = through_objective(0), copy1 = through_objective(1);
  const auto index = [&](const std::string& name) {
    const auto keys = params.keys();
    return std::find(keys.begin(), keys.end(), name) - keys.begin();
  };
  for (size_t i = 0; i < weights.size(); ++i) {
    INFO(params.keys()[i]);
    REQUIRE(copy0[i].defined() == direct[i].defined());
    if (direct[i].defined()) CHECK(max_difference(copy0[i], direct[i]) <= 1e-4 * (1 + direct[i].abs().max().item<double>()));
  }
  CHECK(direct[index("conv1.weight")].abs().sum().item<double>() > 0);
  CHECK(direct[index("layer4.0.conv1.weight")].abs().sum().item<double>() > 0);
  CHECK_FALSE(copy0[index("layer4_copy1.0.conv1.weight")].defined());
  // Copy 1: the penalty reaches its own last stage and the shared trunk, not copy 0's.
  CHECK(copy1[index("layer4_copy1.0.conv1.weight")].abs().sum().item<double>() > 0);
  CHECK(copy1[index("conv1.weight")].abs().sum().item<double>() > 0);
  CHECK_FALSE(copy1[index("layer4.0.conv1.weight")].defined());
}

TEST_CASE("a run hands the backbone's stages to the objective's create, which can refuse a backbone without them",
          "[stages][run]") {
  cfamc::test::TempDir dir;
  const auto run_file = [&](const std::string& backbone_table) {
    return dir.write("run.toml", "[run]\ndevice = \"cpu\"\n[data]\ndataset = \"fashion_mnist\"\n"
                                 "[views.views]\ncount = 2\nsize = 28\n[backbone]\n" +
                                     backbone_table +
                                     "[objective]\nplugin = \"stage_probe\"\ncheck_at_create = true\ncopy = 1\n");
  };
  const std::string plugins = cfamc::test::test_plugin("stage_probe");
  const auto good = cfamc::test::run_host(
      "--validate --config " + run_file("plugin = \"resnet18\"\nin_channels = 1\nlast_stage_copies = 2\n").string(), plugins);
  INFO(good.output);
  CHECK(good.exit_code == 0);
  const auto one_copy =
      cfamc::test::run_host("--validate --config " + run_file("plugin = \"resnet18\"\nin_channels = 1\n").string(), plugins);
  CHECK(one_copy.exit_code == 2);  // the probe's copy option against the backbone's copies: a run-file error
  CHECK_THAT(one_copy.output, Contains("1 copies of its last stage"));
  const auto convnet =
      cfamc::test::run_host("--validate --config " + run_file("plugin = \"convnet\"\nin_channels = 1\n").string(), plugins);
  CHECK(convnet.exit_code == 3);
  CHECK_THAT(convnet.output, Contains("plugin 'stage_probe'") && Contains("needs a backbone that runs by stages"));
}
