// The shipped ResNets beyond their headline counts (every architecture, tensor names, BatchNorm branches,
// channels-last) and the linear evaluators' robust accuracy, read against the clean accuracy of the same
// attacked images.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include "config/options.hpp"
#include "eval/eval_services.hpp"
#include "plugins/components.hpp"
#include "make_component.hpp"
#include "support.hpp"

using namespace cfamc::host;
using cfamc::test::make;

namespace {

std::unique_ptr<Backbone> backbone(const std::string& name, const std::string& toml = "") {
  return make<Backbone>(CFAMC_KIND_BACKBONE, name, toml);
}

int64_t parameter_count(const Backbone& b) {
  int64_t n = 0;
  for (const auto& p : b.parameters()) n += p.numel();
  return n;
}

// Two classes that differ in colour (red- or green-dominant), alternating so that any prefix holds both.
DatasetSplit two_colours(int64_t per_class) {
  const auto images = [&](int64_t cls) {
    at::Tensor x = torch::randint(0, 60, {per_class, 3, 8, 8}, torch::kUInt8);
    x.select(1, cls).add_(180);
    return x;
  };
  return DatasetSplit{torch::stack({images(0), images(1)}, 1).flatten(0, 1),
                      torch::arange(2 * per_class, torch::kLong).remainder(2)};
}

}  // namespace

TEST_CASE("ResNets: parameter counts and shapes of every architecture", "[backbone][resnet]") {
  // torchvision's resnet34 without its classifier, with the 3x3 CIFAR stem: 21,797,672 - 513,000 - 9,408 + 1,728.
  const auto r34 = backbone("resnet34");
  CHECK(parameter_count(*r34) == 21276992);
  CHECK(r34->feature_dim() == 512);
  // The pre-activation nets against their post-activation twins (11,168,832 and 23,500,352): no stem and no
  // shortcut BatchNorm, each block's first BatchNorm on its input channels, a final BatchNorm on the output;
  // for the bottleneck also its last BatchNorm on `planes` instead of 4 x planes.
  const auto preact = backbone("preact_resnet18");
  CHECK(parameter_count(*preact) == 11168832 - 2 * (64 + (128 + 256 + 512) + (64 + 128 + 256)) + 2 * 512);
  const auto v2 = backbone("resnet50v2");
  const int64_t v2_bn1 = 2 * (128 + 256 + 512) + 2 * (192 * 2 + 384 * 3 + 768 * 5 + 1536 * 2);
  const int64_t v2_bn3 = 2 * (192 * 3 + 384 * 4 + 768 * 6 + 1536 * 3);
  CHECK(parameter_count(*v2) == 23500352 - 2 * 64 - 2 * (256 + 512 + 1024 + 2048) + v2_bn1 - v2_bn3 + 2 * 2048);
  torch::NoGradGuard no_grad;
  for (auto* b : {r34.get(), preact.get(), v2.get()}) {
    b->set_training(false);
    // Global pooling: any resolution the strides reach gives one feature vector per image.
    CHECK(b->forward(torch::rand({3, 3, 16, 16})).sizes() == at::IntArrayRef({3, b->feature_dim()}));
  }
}

TEST_CASE("ResNets: torchvision's tensor names, one BatchNorm set per branch", "[backbone][resnet]") {
  const auto r18 = backbone("resnet18", "branches = 2");
  CHECK(r18->num_branches() == 2);
  // Every BatchNorm's weight and bias once more: 4,800 channels in resnet18.
  CHECK(parameter_count(*r18) == 11168832 + 2 * 4800);
  const TensorMap params = r18->tensors(CFAMC_ROLE_PARAMETER), buffers = r18->tensors(CFAMC_ROLE_BUFFER);
  for (const char* name : {"conv1.weight", "bn1.0.weight", "bn1.1.bias", "layer1.0.conv1.weight", "layer1.1.bn2.1.weight",
                           "layer2.0.shortcut.weight", "layer2.0.shortcut_bn.1.weight", "layer4.1.conv2.weight"}) {
    INFO(name);
    CHECK(params.contains(name));
  }
  CHECK_FALSE(params.contains("layer1.0.shortcut.weight"));  // the shape is kept: identity
  CHECK(buffers.contains("layer3.0.shortcut_bn.1.running_var"));

  const auto preact = backbone("preact_resnet18", "branches = 2");
  const TensorMap preact_params = preact->tensors(CFAMC_ROLE_PARAMETER);
  CHECK(preact_params.contains("bn_final.1.weight"));
  CHECK(preact_params.contains("layer2.0.shortcut.weight"));
  CHECK_FALSE(preact_params.contains("bn1.0.weight"));
  CHECK_FALSE(preact_params.contains("layer2.0.shortcut_bn.0.weight"));
  const TensorMap r50_params = backbone("resnet50")->tensors(CFAMC_ROLE_PARAMETER);
  CHECK(r50_params.contains("layer1.0.shortcut.weight"));  // 64 to 256 channels
  CHECK(r50_params.contains("layer4.2.conv3.weight"));

  // Training on branch 1 moves branch 1's running statistics only.
  const at::Tensor branch0 = buffers["bn1.0.running_mean"].clone(), branch1 = buffers["bn1.1.running_mean"].clone();
  r18->set_training(true);
  r18->forward(torch::rand({4, 3, 8, 8}), 1);
  CHECK(torch::equal(buffers["bn1.0.running_mean"], branch0));
  CHECK_FALSE(torch::equal(buffers["bn1.1.running_mean"], branch1));
  CHECK_THROWS(r18->forward(torch::rand({4, 3, 8, 8}), 2));
}

TEST_CASE("ResNets: channels-last (the default) changes the memory format, not the function", "[backbone][resnet]") {
  const auto plain = backbone("preact_resnet18", "channels_last = false");
  const auto last = backbone("preact_resnet18");
  for (const auto& p : last->parameters()) {
    if (p.dim() == 4) CHECK(p.is_contiguous(torch::MemoryFormat::ChannelsLast));
  }
  for (const auto& p : plain->parameters()) CHECK(p.is_contiguous());
  torch::NoGradGuard no_grad;
  plain->set_training(false);
  last->set_training(false);
  const at::Tensor x = torch::rand({2, 3, 16, 16});
  CHECK(torch::allclose(plain->forward(x), last->forward(x), 1e-4, 1e-5));
}

TEST_CASE("linear evaluators report robust accuracy beside the clean accuracy of the same attacked images",
          "[evaluator][robust_subset]") {
  torch::manual_seed(11);  // the images
  auto encoder = backbone("convnet", "width = 8");
  // Fresh noise on every call, as random crops give: multicrop's clean and attacked features then differ
  // even where the attack changes nothing.
  at::Generator generator = at::detail::createCPUGenerator(5);
  const auto noisy_views = [&](const std::string&, const at::Tensor& batch) {
    const at::Tensor views = batch.repeat({3, 1, 1, 1});
    return (views + 0.3 * torch::randn(views.sizes(), generator)).clamp(0, 1);
  };
  // pgd without steps from a zero start leaves the images as they are.
  auto identity = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nrandom_start = false");
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3\nepsilon = \"8/255\"");
  cfamc::test::TempDir dir;
  // A short, weak head leaves clean mistakes for an attack to "repair".
  const std::string options = "feature = \"backbone\"\nepochs = 10\noptimizer = \"adam\"\nlr = 0.003\nbatch_size = 20\n"
                              "robust_max_images = 15\nrobust_batch_size = 4\nrobust_head_attack = \"pgd\"\n"
                              "robust_head_epochs = 1";
  for (const char* name : {"linear_probe", "multicrop"}) {
    INFO(name);
    auto evaluator = make<Evaluator>(CFAMC_KIND_EVALUATOR, name, options, encoder->feature_dim());
    EvalServices services(*encoder, nullptr, {{"train", two_colours(20)}, {"test", two_colours(20)}},
                          {{"identity", identity.get()}, {"pgd", pgd.get()}}, dir.path(), noisy_views);
    evaluator->evaluate(*services.get());
    const auto& metrics = services.metrics();
    for (const std::string prefix : {"", "robust_head/"}) {
      INFO(prefix);
      const auto& subset = metrics.at(nlohmann::json::json_pointer("/" + prefix + "robust_subset"));
      CHECK(subset.at("images").get<double>() == 15);
      const double clean = subset.at("clean_accuracy").get<double>();
      const auto& robust = metrics.at(nlohmann::json::json_pointer("/" + prefix + "robust_accuracy"));
      for (const char* id : {"identity", "pgd", "worst_case"}) {
        INFO(id);
        CHECK(robust.at(id).get<double>() <= clean);
      }
      // Without views the attack that changes nothing changes no prediction either.
      if (std::string(name) == "linear_probe") CHECK(robust.at("identity").get<double>() == Approx(clean));
    }
  }
}
