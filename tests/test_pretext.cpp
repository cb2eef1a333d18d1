// The adversarial pretext objectives of Chen et al. (CVPR 2020), from the `pretext` plugin: rotation and jigsaw
// (the classes each batch draws, the images built from them against a direct construction, the draws as
// checkpointed state, the loss 1/2 (CE clean + CE adv) against a direct computation from the plugins' tensors,
// the input the attack perturbs), selfie (the patch grid, masking that keeps masked patches from the pooling,
// its loss against a direct computation, the reference's double softmax as an option), pretext_ensemble (the
// gradient-diversity penalty against a direct log det, and its gradient reaching the backbone), backbones
// without stages refused naming both plugins, and short whole runs on Fashion-MNIST in which the losses fall.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "config/options.hpp"
#include "plugins/components.hpp"
#include "train/checkpoint.hpp"
#include "train/objective_oracle.hpp"
#include "make_component.hpp"
#include "objective_checks.hpp"
#include "support.hpp"
#include "tiny_run.hpp"

// Plain-LibTorch parts of the plugin, driven directly.
#include "attention_pooling.hpp"
#include "gradient_diversity.hpp"

using namespace cfamc::host;
using cfamc::test::make;
using cfamc::test::attack_with_pgd;
using Catch::Matchers::Contains;

namespace {

constexpr int64_t kFeatureDim = 32;  // convnet with width 8: 8 << 2 channels

// The objective `name` with options `toml` and component seed `seed` (make() always gives 1234).
std::unique_ptr<Objective> pretext(const std::string& name, uint64_t seed = 1234, const std::string& toml = "",
                                   int64_t feature_dim = kFeatureDim) {
  const ComponentInfo& info = cfamc::test::registry().find(CFAMC_KIND_OBJECTIVE, name);
  ComponentSetup setup;
  setup.label = "objective";
  setup.options = resolve_options(toml::parse(toml), info.options, name, "test");
  setup.seed = seed;
  setup.feature_dim = feature_dim;
  return instantiate<Objective>(cfamc::test::registry(), info, std::move(setup));
}

// The objective `name` as a run on `backbone` makes it: the backbone's feature width and stages in its context.
std::unique_ptr<Objective> on_backbone(const std::string& name, const Backbone& backbone, const std::string& toml = "") {
  const ComponentInfo& info = cfamc::test::registry().find(CFAMC_KIND_OBJECTIVE, name);
  ComponentSetup setup;
  setup.label = "objective";
  setup.options = resolve_options(toml::parse(toml), info.options, name, "test");
  setup.seed = 1234;
  setup.feature_dim = backbone.feature_dim();
  setup.stages = backbone.stages();
  return instantiate<Objective>(cfamc::test::registry(), info, std::move(setup));
}

TensorMap views_of(const at::Tensor& images) {
  TensorMap views;
  views.insert("views", images);
  return views;
}

// The prepared inputs of one batch, drawn as the trainer does.
TensorMap prepared(const Objective& objective, const at::Tensor& images) {
  return objective.prepare(views_of(images), at::Tensor());
}

std::vector<int64_t> values_of(const at::Tensor& t) {
  const at::Tensor flat = t.to(torch::kLong).contiguous().view(-1);
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

// Tile `index` (row-major in a 4x4 grid) of the image [C, S, S].
at::Tensor tile(const at::Tensor& image, int64_t index) {
  const int64_t side = image.size(1) / 4;
  const int64_t row = index / 4, column = index % 4;
  return image.slice(1, row * side, (row + 1) * side).slice(2, column * side, (column + 1) * side);
}

// The name of the input each objective's attack perturbs.
const char* attacked_name(const std::string& objective) { return objective == "rotation" ? "rotated" : "shuffled"; }

}  // namespace

TEST_CASE("rotation: every batch holds the four rotations equally often, each image exactly its torch::rot90",
          "[pretext]") {
  auto rotation = pretext("rotation");
  CHECK(rotation->view_groups() == std::vector<std::string>{"views"});
  CHECK(rotation->attacked_inputs() == std::vector<std::string>{"rotated"});
  for (int64_t batch : {16, 12, 16, 10, 7}) {
    INFO("batch " << batch);
    const at::Tensor images = torch::rand({batch, 2, 6, 6});
    const TensorMap inputs = prepared(*rotation, images);
    const at::Tensor labels = inputs["label"];
    REQUIRE(labels.sizes() == at::IntArrayRef{batch});
    REQUIRE(labels.scalar_type() == torch::kLong);
    const at::Tensor counts = torch::bincount(labels, {}, 4);
    REQUIRE(counts.numel() == 4);
    CHECK((counts.max() - counts.min()).item<int64_t>() == (batch % 4 == 0 ? 0 : 1));
    for (int64_t i = 0; i < batch; ++i) {
      const int64_t quarter_turns = labels[i].item<int64_t>();
      INFO("image " << i << ", " << quarter_turns << " quarter turns");
      CHECK(torch::equal(inputs["rotated"][i], torch::rot90(images[i], quarter_turns, {1, 2})));
      // Falsifiable: a turn really moves the pixels of these (random) images.
      if (quarter_turns != 0) CHECK_FALSE(torch::equal(inputs["rotated"][i], images[i]));
    }
  }
  // A fresh shuffle every batch: two batches of 16 get different orders.
  const at::Tensor images = torch::rand({16, 1, 4, 4});
  CHECK_FALSE(torch::equal(prepared(*rotation, images)["label"], prepared(*rotation, images)["label"]));
}

TEST_CASE("rotation: images that are not square are refused, naming the view group", "[pretext]") {
  auto rotation = pretext("rotation");
  CHECK_THROWS_WITH(prepared(*rotation, torch::rand({4, 1, 8, 6})), Contains("view group 'views'"));
}

TEST_CASE("jigsaw: the 31 tile orders are the identity and 30 distinct permutations, fixed by the seed",
          "[pretext]") {
  auto jigsaw = pretext("jigsaw");
  CHECK(jigsaw->attacked_inputs() == std::vector<std::string>{"shuffled"});
  const at::Tensor orders = jigsaw->tensors(CFAMC_ROLE_BUFFER)["tile_orders"];
  REQUIRE(orders.sizes() == at::IntArrayRef{31, 16});
  CHECK(torch::equal(orders[0], torch::arange(16, torch::kLong)));
  std::set<std::vector<int64_t>> distinct;
  for (int64_t c = 0; c < 31; ++c) {
    CHECK(torch::equal(std::get<0>(orders[c].sort()), torch::arange(16, torch::kLong)));  // a permutation
    distinct.insert(values_of(orders[c]));
  }
  CHECK(distinct.size() == 31);
  CHECK(jigsaw->tensors(CFAMC_ROLE_PARAMETER)["head.weight"].sizes() == at::IntArrayRef{31, kFeatureDim});
  // The same seed draws the same orders, whatever the head's width; another seed other orders.
  CHECK(torch::equal(orders, pretext("jigsaw", 1234, "", 64)->tensors(CFAMC_ROLE_BUFFER)["tile_orders"]));
  const at::Tensor other = pretext("jigsaw", 99)->tensors(CFAMC_ROLE_BUFFER)["tile_orders"];
  CHECK(torch::equal(other[0], orders[0]));
  CHECK_FALSE(torch::equal(other, orders));
  CHECK(pretext("jigsaw", 1234, "permutations = 5")->tensors(CFAMC_ROLE_BUFFER)["tile_orders"].size(0) == 6);
  CHECK_THROWS_WITH(pretext("jigsaw", 1234, "permutations = 0"), Contains("permutations"));
  CHECK_THROWS_WITH(pretext("jigsaw", 1234, "identity_probability = 1.5"), Contains("identity_probability"));
}

TEST_CASE("jigsaw: over 20000 draws the identity comes with probability 0.1, the other orders uniformly",
          "[pretext]") {
  constexpr int64_t draws = 20000;
  const at::Tensor blank = torch::zeros({draws, 1, 4, 4});
  const at::Tensor labels = prepared(*pretext("jigsaw"), blank)["label"];
  REQUIRE(labels.min().item<int64_t>() >= 0);
  REQUIRE(labels.max().item<int64_t>() <= 30);
  const at::Tensor counts = torch::bincount(labels, {}, 31).to(torch::kDouble);
  // Binomial counts within 5 standard deviations: a seeded draw, and a bound a fair draw breaks once in 10^6.
  const auto within_five_sigma = [&](double count, double p) {
    return std::abs(count - draws * p) <= 5 * std::sqrt(draws * p * (1 - p));
  };
  CHECK(within_five_sigma(counts[0].item<double>(), 0.1));
  for (int64_t c = 1; c <= 30; ++c) {
    INFO("class " << c << ": " << counts[c].item<double>());
    CHECK(within_five_sigma(counts[c].item<double>(), 0.9 / 30));
  }
  // The option is what sets the rate.
  const at::Tensor half = prepared(*pretext("jigsaw", 1234, "identity_probability = 0.5"), blank)["label"];
  CHECK(within_five_sigma(half.eq(0).sum().item<double>(), 0.5));
  const at::Tensor never = prepared(*pretext("jigsaw", 1234, "identity_probability = 0.0"), blank)["label"];
  CHECK(never.eq(0).sum().item<int64_t>() == 0);
}

TEST_CASE("jigsaw: the shuffled image holds input tile order[j] at position j, for 8x8 and 7x7 tiles", "[pretext]") {
  for (int64_t size : {32, 28}) {
    INFO("size " << size);
    auto jigsaw = pretext("jigsaw");
    const at::Tensor orders = jigsaw->tensors(CFAMC_ROLE_BUFFER)["tile_orders"];
    const at::Tensor images = torch::rand({12, 3, size, size});
    const TensorMap inputs = prepared(*jigsaw, images);
    const at::Tensor labels = inputs["label"];
    REQUIRE(inputs["shuffled"].sizes() == images.sizes());
    CHECK(labels.ne(0).any().item<bool>());  // some images are shuffled, so the check below can fail
    int64_t mismatches = 0;
    for (int64_t i = 0; i < 12; ++i) {
      const std::vector<int64_t> order = values_of(orders[labels[i].item<int64_t>()]);
      for (int64_t j = 0; j < 16; ++j)
        if (!torch::equal(tile(inputs["shuffled"][i], j), tile(images[i], order[j]))) ++mismatches;
      if (labels[i].item<int64_t>() != 0) CHECK_FALSE(torch::equal(inputs["shuffled"][i], images[i]));
    }
    CHECK(mismatches == 0);
  }
  CHECK_THROWS_WITH(prepared(*pretext("jigsaw"), torch::rand({2, 1, 30, 30})), Contains("divisible by 4"));
}

TEST_CASE("rotation and jigsaw: the per-batch draws are checkpointed state, so a restored copy draws on as the original",
          "[pretext]") {
  for (const char* name : {"rotation", "jigsaw"}) {
    INFO(name);
    auto original = pretext(name), restored = pretext(name);
    const at::Tensor images = torch::rand({16, 1, 8, 8});
    const at::Tensor first = prepared(*original, images)["label"];
    CHECK(torch::equal(prepared(*restored, images)["label"], first));  // the same seed, the same first batch
    const at::Tensor second = prepared(*original, images)["label"];
    // A resume copies every checkpointed tensor back in place; `restored` is one batch behind until then.
    REQUIRE(original->tensors(CFAMC_ROLE_BUFFER).contains("rng.state"));
    const TensorMap saved = original->tensors(CFAMC_ROLE_BUFFER);
    for (auto& item : restored->tensors(CFAMC_ROLE_BUFFER)) item.value().copy_(saved[item.key()]);
    const at::Tensor third = prepared(*original, images)["label"];
    CHECK_FALSE(torch::equal(third, second));
    CHECK(torch::equal(prepared(*restored, images)["label"], third));
  }
}

namespace {

struct PretextSetup {
  explicit PretextSetup(const std::string& name)
      : input(attacked_name(name)),
        backbone(make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8\nin_channels = 1")),
        objective(pretext(name)) {
    backbone->set_training(false);  // batch-independent features: the direct computation may batch differently
    objective->set_training(false);
    {
      // A fresh head's logits are nearly uniform, every CE about log(classes): make them confident so that
      // the clean and adversarial terms differ.
      torch::NoGradGuard no_grad;
      objective->tensors(CFAMC_ROLE_PARAMETER)["head.weight"].mul_(20);
    }
    clean = prepared(*objective, torch::rand({8, 1, 16, 16}));
    adversarial.insert(input, (clean[input] + 0.05 * torch::randn_like(clean[input]).sign()).clamp(0, 1));
  }
  // Cross-entropy of the head written out from the plugin's tensors.
  at::Tensor cross_entropy(const at::Tensor& images) const {
    const TensorMap p = objective->tensors(CFAMC_ROLE_PARAMETER);
    const at::Tensor logits = backbone->forward(images, 0).matmul(p["head.weight"].t()) + p["head.bias"];
    return torch::nn::functional::cross_entropy(logits, clean["label"]);
  }
  std::string input;
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> objective;
  TensorMap clean, adversarial;
};

}  // namespace

TEST_CASE("rotation and jigsaw: training loss is 1/2 (CE clean + CE adv), CE clean alone when clean, the attack's CE adv",
          "[pretext]") {
  for (const char* name : {"rotation", "jigsaw"}) {
    INFO(name);
    PretextSetup s(name);
    torch::NoGradGuard no_grad;
    const double clean = s.cross_entropy(s.clean[s.input]).item<double>();
    const double adversarial = s.cross_entropy(s.adversarial[s.input]).item<double>();
    CHECK(std::abs(clean - adversarial) > 1e-4);  // falsifiable: the two terms differ
    const LossResult train = s.objective->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_TRAIN);
    CHECK(train.loss.item<double>() == Approx(0.5 * (clean + adversarial)).epsilon(1e-5));
    CHECK(train.scalars["ce_clean"].item<double>() == Approx(clean).epsilon(1e-5));
    CHECK(train.scalars["ce_adv"].item<double>() == Approx(adversarial).epsilon(1e-5));
    for (const char* accuracy : {"pretext_accuracy_clean", "pretext_accuracy_adv"}) {
      REQUIRE(train.scalars.contains(accuracy));
      const double value = train.scalars[accuracy].item<double>();
      CHECK(value >= 0);
      CHECK(value <= 1);
    }
    const LossResult alone = s.objective->loss(*s.backbone, s.clean, TensorMap(), CFAMC_PHASE_TRAIN);
    CHECK(alone.loss.item<double>() == Approx(clean).epsilon(1e-5));
    CHECK_FALSE(alone.scalars.contains("ce_adv"));
    const LossResult attack = s.objective->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_ATTACK);
    CHECK(attack.loss.item<double>() == Approx(adversarial).epsilon(1e-5));
  }
}

TEST_CASE("rotation and jigsaw: the attack perturbs the rotated or shuffled image and raises the pretext loss",
          "[pretext]") {
  for (const char* name : {"rotation", "jigsaw"}) {
    INFO(name);
    PretextSetup s(name);
    CHECK(s.objective->attacked_inputs() == std::vector<std::string>{s.input});
    TensorMap candidate;
    candidate.insert(s.input, s.adversarial[s.input].clone().requires_grad_(true));
    s.objective->loss(*s.backbone, s.clean, candidate, CFAMC_PHASE_ATTACK).loss.backward();
    REQUIRE(candidate[s.input].grad().defined());
    CHECK(candidate[s.input].grad().abs().sum().item<double>() > 0);
    const TensorMap attacked = attack_with_pgd(*s.backbone, *s.objective, s.clean);
    REQUIRE(attacked.keys() == std::vector<std::string>{s.input});
    const double moved = (attacked[s.input] - s.clean[s.input]).abs().max().item<double>();
    CHECK(moved > 1e-3);
    CHECK(moved <= 8.0 / 255 + 1e-6);
    torch::NoGradGuard no_grad;
    CHECK(s.cross_entropy(attacked[s.input]).item<double>() > s.cross_entropy(s.clean[s.input]).item<double>());
  }
}

namespace {

// A few hundred Fashion-MNIST images at their own size (28 = 4 tiles of 7 for jigsaw), no augmentation, the
// paper's SGD and PGD(8/255, 2/255) shortened to 3 steps.
std::string pretext_run(const std::string& objective) {
  return R"(
[run]
device = "cpu"

[data]
dataset = "fashion_mnist"
train_subset = 384
test_subset = 100

[views.views]
count = 1
size = 28
crop = false
flip = 0.0
jitter = 0.0
grayscale = 0.0

[train]
epochs = 10
batch_size = 64
optimizer = "sgd"
lr = 0.1
momentum = 0.9
weight_decay = 3e-4
schedule = "constant"
log_every = 1
checkpoint_every = 6

[backbone]
plugin = "convnet"
in_channels = 1
width = 8

[objective]
plugin = ")" + objective + R"("

[attack]
plugin = "pgd"
epsilon = "8/255"
step_size = "2/255"
steps = 3
)";
}

// The mean of `key` over the metrics lines of epoch `epoch` (6 steps, a line each).
double epoch_mean(const std::vector<nlohmann::json>& lines, const char* key, size_t epoch) {
  double sum = 0;
  for (size_t i = 6 * epoch; i < 6 * epoch + 6; ++i) sum += lines.at(i)[key].get<double>();
  return sum / 6;
}

}  // namespace

TEST_CASE("rotation and jigsaw: in a short adversarial Fashion-MNIST run the pretext loss falls", "[pretext][run]") {
  for (const char* objective : {"rotation", "jigsaw"}) {
    INFO(objective);
    cfamc::test::TempDir dir;
    const auto file = dir.write("pretext.toml", pretext_run(objective));
    const auto out = cfamc::test::run_host("--config " + file.string() + " --set run.dir=" + dir.path().string());
    INFO(out.output);
    REQUIRE(out.exit_code == 0);
    const auto lines = cfamc::test::read_lines(dir.path() / "metrics.jsonl");
    REQUIRE(lines.size() == 60);  // 6 steps an epoch, 10 epochs, a line each
    for (const char* key : {"loss", "ce_clean", "ce_adv", "pretext_accuracy_clean", "pretext_accuracy_adv"})
      CHECK(lines.back().contains(key));
    // First epoch against last: single steps are noisy, epochs much less so.
    INFO("ce_clean " << epoch_mean(lines, "ce_clean", 0) << " -> " << epoch_mean(lines, "ce_clean", 9));
    CHECK(epoch_mean(lines, "ce_clean", 9) < epoch_mean(lines, "ce_clean", 0) - 0.2);
    CHECK(epoch_mean(lines, "ce_adv", 9) < epoch_mean(lines, "ce_adv", 0) - 0.2);
    CHECK(epoch_mean(lines, "pretext_accuracy_clean", 9) > epoch_mean(lines, "pretext_accuracy_clean", 0) + 0.05);
  }
}

TEST_CASE("rotation: an interrupted and resumed run draws the rotations of an uninterrupted one",
          "[pretext][run][resume]") {
  // Clean training: PGD's random start is not yet checkpointed state, the rotation stream is.
  cfamc::test::TempDir dir;
  const auto file = dir.write("rotation.toml", pretext_run("rotation"));
  const std::string base = "--config " + file.string() + " --unset attack --set train.epochs=2 --set run.dir=";
  const std::string whole = (dir.path() / "whole").string(), split = (dir.path() / "split").string();
  REQUIRE(cfamc::test::run_host(base + whole).exit_code == 0);
  REQUIRE(cfamc::test::run_host(base + split + " --until-step 6").exit_code == 0);
  const auto resumed = cfamc::test::run_host(base + split + " --resume");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  const auto a = load_checkpoint(whole + "/checkpoints/step-000000012.pt");
  const auto b = load_checkpoint(split + "/checkpoints/step-000000012.pt");
  REQUIRE(a.contains("objective/rng.state"));
  for (const auto& item : a) {
    INFO(item.key());
    REQUIRE(b.contains(item.key()));
    CHECK(torch::equal(item.value(), b[item.key()]));
  }
}

// ---- selfie -----------------------------------------------------------------------------------------------

TEST_CASE("selfie: the patches are the 4x4 grid row-major, and the pooling never sees a masked patch", "[pretext]") {
  const at::Tensor images = torch::rand({2, 3, 32, 32});
  const at::Tensor patches = cfamc::pretext::patches_of(images, 4);
  REQUIRE(patches.sizes() == at::IntArrayRef({32, 3, 8, 8}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 16; ++j) CHECK(torch::equal(patches[16 * i + j], tile(images[i], j)));

  at::Generator generator = at::detail::createCPUGenerator(7);
  cfamc::pretext::AttentionPooling pooling(cfamc::pretext::PoolingShape{16, 4, 2, 4, 32, 0.0}, generator);
  pooling->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor order = torch::randperm(16, generator, torch::kLong);
  const at::Tensor masked = order.slice(0, 0, 4).expand({3, 4}).contiguous();
  const at::Tensor visible = order.slice(0, 4).expand({3, 12}).contiguous();
  const at::Tensor embeddings = torch::randn({3, 16, 16});
  const at::Tensor queries = pooling->queries(embeddings, visible, masked);
  REQUIRE(queries.sizes() == at::IntArrayRef({3, 4, 16}));
  for (int64_t k = 0; k < 4; ++k) {
    at::Tensor changed = embeddings.clone();
    changed.select(1, order[k].item<int64_t>()).add_(torch::randn({3, 16}));
    INFO("masked position " << order[k].item<int64_t>());
    CHECK(torch::equal(pooling->queries(changed, visible, masked), queries));
  }
  for (int64_t k = 4; k < 16; k += 5) {
    at::Tensor changed = embeddings.clone();
    changed.select(1, order[k].item<int64_t>()).add_(torch::randn({3, 16}));
    INFO("visible position " << order[k].item<int64_t>());
    CHECK((pooling->queries(changed, visible, masked) - queries).abs().max().item<double>() > 1e-4);
  }
  // Query = summary + row embedding + column embedding: two positions' queries differ by their embeddings alone.
  const auto parameters = pooling->named_parameters();
  const auto place = [&](int64_t p) { return parameters["row_embeddings"][p / 4] + parameters["column_embeddings"][p % 4]; };
  const int64_t first = order[0].item<int64_t>(), second = order[1].item<int64_t>();
  CHECK(torch::allclose(queries.select(1, 0) - queries.select(1, 1), (place(first) - place(second)).expand({3, 16}),
                        1e-5, 1e-5));
}

TEST_CASE("gradient_diversity: the mean log det of the Gram matrix of the normalised gradients", "[pretext]") {
  const at::Tensor a = torch::randn({2, 1, 3, 3}, torch::kDouble), b = torch::randn({2, 1, 3, 3}, torch::kDouble);
  // One gradient three times: G^T G is all ones, det (3 + e) e^2.
  const double e = 1e-5;
  CHECK(cfamc::pretext::gradient_diversity({a, 5 * a, a}).item<double>() == Approx(std::log((3 + e) * e * e)).epsilon(1e-6));
  // Orthogonal unit columns, whatever their scale: det (1 + e)^3, less the reference's 1e-10 added to each norm.
  const at::Tensor x = torch::zeros({1, 4}, torch::kDouble).index_put_({0, 0}, 2.0);
  const at::Tensor y = torch::zeros({1, 4}, torch::kDouble).index_put_({0, 1}, -3.0);
  const at::Tensor z = torch::zeros({1, 4}, torch::kDouble).index_put_({0, 3}, 0.5);
  CHECK(cfamc::pretext::gradient_diversity({x, y, z}).item<double>() == Approx(3 * std::log1p(e)).epsilon(0).margin(1e-9));
  // Sample by sample, then the mean.
  const double first = cfamc::pretext::gradient_diversity({a.slice(0, 0, 1), b.slice(0, 0, 1), (a + b).slice(0, 0, 1)}).item<double>();
  const double second = cfamc::pretext::gradient_diversity({a.slice(0, 1), b.slice(0, 1), (a + b).slice(0, 1)}).item<double>();
  CHECK(cfamc::pretext::gradient_diversity({a, b, a + b}).item<double>() == Approx((first + second) / 2).epsilon(1e-9));
}

namespace {

constexpr const char* kSmallPooling = "layers = 1\nheads = 4\nfeedforward = 32\n";

std::unique_ptr<Backbone> resnet18(const std::string& toml = "") {
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "resnet18", "in_channels = 1\n" + toml);
  backbone->set_training(false);  // batch-independent features: the direct computations batch differently
  return backbone;
}

// Selfie's summed cross-entropy written out from the objective's tensors, the backbone's stages and the plugin's
// own pooling module (attention_pooling.hpp) loaded with the objective's weights.
at::Tensor selfie_direct(const Backbone& backbone, const Objective& selfie, const TensorMap& inputs,
                         const at::Tensor& image, bool double_softmax) {
  const TensorMap p = selfie.tensors(CFAMC_ROLE_PARAMETER);
  at::Generator unused = at::detail::createCPUGenerator(1);
  cfamc::pretext::AttentionPooling pooling(cfamc::pretext::PoolingShape{256, 4, 1, 4, 32, 0.0}, unused);
  pooling->eval();
  torch::NoGradGuard no_grad;
  for (auto& item : pooling->named_parameters()) item.value().copy_(p["pooling." + item.key()]);
  const int64_t n = image.size(0);
  const at::Tensor embeddings =
      backbone.forward_stages(cfamc::pretext::patches_of(image, 4), 0, 3).mean({2, 3}).view({n, 16, -1});
  const at::Tensor queries = pooling->queries(embeddings, inputs["visible"], inputs["masked"]);
  at::Tensor logits = queries.bmm(cfamc::pretext::select_patches(embeddings, inputs["masked"]).transpose(1, 2));
  if (double_softmax) logits = torch::softmax(logits, 2);
  at::Tensor sum = torch::zeros({});
  for (int64_t i = 0; i < 4; ++i)
    sum = sum + torch::nn::functional::cross_entropy(logits.select(1, i), torch::full({n}, i, torch::kLong));
  return sum;
}

}  // namespace

TEST_CASE("selfie: each batch masks 4 of the 16 positions for all its images, drawn from the checkpointed stream",
          "[pretext]") {
  const auto backbone = resnet18();
  auto selfie = on_backbone("selfie", *backbone, kSmallPooling), restored = on_backbone("selfie", *backbone, kSmallPooling);
  CHECK(selfie->attacked_inputs() == std::vector<std::string>{"image"});
  // The patch embedding is stage 3's pooled output: 256 channels on resnet18.
  CHECK(selfie->tensors(CFAMC_ROLE_PARAMETER)["pooling.summary_token"].sizes() == at::IntArrayRef({1, 1, 256}));
  const at::Tensor images = torch::rand({5, 1, 16, 16});
  const TensorMap first = prepared(*selfie, images);
  CHECK(torch::equal(first["image"], images));
  REQUIRE(first["masked"].sizes() == at::IntArrayRef({5, 4}));
  REQUIRE(first["visible"].sizes() == at::IntArrayRef({5, 12}));
  const at::Tensor positions = torch::cat({first["masked"], first["visible"]}, 1);
  for (int64_t i = 0; i < 5; ++i) {
    CHECK(torch::equal(std::get<0>(positions[i].sort()), torch::arange(16, torch::kLong)));
    CHECK(torch::equal(positions[i], positions[0]));
  }
  CHECK(torch::equal(prepared(*restored, images)["masked"], first["masked"]));
  const at::Tensor second = prepared(*selfie, images)["masked"];
  CHECK_FALSE(torch::equal(second, first["masked"]));  // 1820 ways to mask 4 of 16: a repeat would be a fluke
  const TensorMap saved = selfie->tensors(CFAMC_ROLE_BUFFER);
  for (auto& item : restored->tensors(CFAMC_ROLE_BUFFER)) item.value().copy_(saved[item.key()]);
  CHECK(torch::equal(prepared(*restored, images)["masked"], prepared(*selfie, images)["masked"]));

  CHECK_THROWS_WITH(prepared(*selfie, torch::rand({2, 1, 18, 18})), Contains("divisible by 4"));
  CHECK_THROWS_WITH(on_backbone("selfie", *backbone, "patch_stage = 5"), Contains("patch_stage = 5"));
  CHECK_THROWS_WITH(on_backbone("selfie", *backbone, "heads = 7"), Contains("heads = 7"));
}

TEST_CASE("selfie: the loss is 1/2 (CE clean + CE adv) of the summed masked-position CEs, the double softmax an option off by default",
          "[pretext]") {
  const auto backbone = resnet18();
  auto plain = on_backbone("selfie", *backbone, kSmallPooling);
  auto doubled = on_backbone("selfie", *backbone, std::string(kSmallPooling) + "reference_double_softmax = true");
  plain->set_training(false);
  doubled->set_training(false);
  const TensorMap clean = prepared(*plain, torch::rand({6, 1, 16, 16}));
  TensorMap adversarial;
  adversarial.insert("image", (clean["image"] + 0.05 * torch::randn_like(clean["image"]).sign()).clamp(0, 1));
  torch::NoGradGuard no_grad;
  for (const bool double_softmax : {false, true}) {
    INFO("double softmax " << double_softmax);
    const Objective& selfie = double_softmax ? *doubled : *plain;
    const double clean_ce = selfie_direct(*backbone, selfie, clean, clean["image"], double_softmax).item<double>();
    const double adversarial_ce =
        selfie_direct(*backbone, selfie, clean, adversarial["image"], double_softmax).item<double>();
    CHECK(std::abs(clean_ce - adversarial_ce) > 1e-6);
    const LossResult train = selfie.loss(*backbone, clean, adversarial, CFAMC_PHASE_TRAIN);
    CHECK(train.loss.item<double>() == Approx(0.5 * (clean_ce + adversarial_ce)).epsilon(1e-4));
    CHECK(train.scalars["ce_adv"].item<double>() == Approx(adversarial_ce).epsilon(1e-4));
    CHECK(selfie.loss(*backbone, clean, TensorMap(), CFAMC_PHASE_TRAIN).loss.item<double>() ==
          Approx(clean_ce).epsilon(1e-4));
    CHECK(selfie.loss(*backbone, clean, adversarial, CFAMC_PHASE_ATTACK).loss.item<double>() ==
          Approx(adversarial_ce).epsilon(1e-4));
  }
  const double plain_loss = plain->loss(*backbone, clean, TensorMap(), CFAMC_PHASE_TRAIN).loss.item<double>();
  const double doubled_loss = doubled->loss(*backbone, clean, TensorMap(), CFAMC_PHASE_TRAIN).loss.item<double>();
  CHECK(std::abs(plain_loss - doubled_loss) > 1e-3);
}

TEST_CASE("selfie and pretext_ensemble: a backbone without stages fails the first loss naming both plugins",
          "[pretext]") {
  const auto convnet = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8\nin_channels = 1");
  for (const char* name : {"selfie", "pretext_ensemble"}) {
    INFO(name);
    auto objective = on_backbone(name, *convnet, kSmallPooling);
    const TensorMap clean = prepared(*objective, torch::rand({2, 1, 16, 16}));
    CHECK_THROWS_WITH(objective->loss(*convnet, clean, TensorMap(), CFAMC_PHASE_TRAIN),
                      Contains("plugin '" + std::string(name) + "'") && Contains("plugin 'convnet'") &&
                          Contains("offers no stages"));
  }
  // The ensemble needs copies 0 and 1 of the last stage.
  CHECK_THROWS_WITH(on_backbone("pretext_ensemble", *resnet18(), kSmallPooling),
                    Contains("pretext_ensemble") && Contains("last_stage_copies = 2"));
}

// ---- pretext_ensemble ---------------------------------------------------------------------------------------

namespace {

// log det(G^T G + 1e-5 I) averaged over the samples, G's columns the three gradients flattened and normalised,
// the 3x3 determinant written out.
double direct_log_det(const std::vector<at::Tensor>& gradients) {
  std::vector<at::Tensor> unit;
  for (const auto& g : gradients) {
    const at::Tensor flat = g.flatten(1).to(torch::kDouble);
    unit.push_back(flat / (flat.norm(2, {1}, true) + 1e-10));
  }
  const int64_t n = unit[0].size(0);
  double sum = 0;
  for (int64_t s = 0; s < n; ++s) {
    double m[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) m[i][j] = unit[i][s].dot(unit[j][s]).item<double>() + (i == j ? 1e-5 : 0.0);
    const double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                       m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    sum += std::log(det);
  }
  return sum / n;
}

}  // namespace

TEST_CASE("pretext_ensemble: the penalty is the log det of the normalised input gradients, and its gradient reaches the backbone",
          "[pretext]") {
  const auto backbone = resnet18("last_stage_copies = 2");
  auto unpenalised = on_backbone("pretext_ensemble", *backbone, std::string(kSmallPooling) + "penalty_weight = 0.0");
  auto penalised = on_backbone("pretext_ensemble", *backbone, std::string(kSmallPooling) + "penalty_weight = 1.0");
  unpenalised->set_training(false);
  penalised->set_training(false);
  CHECK(penalised->attacked_inputs() == std::vector<std::string>{"rotated", "shuffled", "image"});
  const TensorMap clean = prepared(*unpenalised, torch::rand({4, 1, 16, 16}));
  for (const char* key : {"rotation_label", "jigsaw_label", "selfie_masked", "selfie_visible"}) CHECK(clean.contains(key));
  TensorMap adversarial;
  for (const char* input : {"rotated", "shuffled", "image"})
    adversarial.insert(input, (clean[input] + 0.03 * torch::randn_like(clean[input]).sign()).clamp(0, 1).requires_grad_(true));

  // Without the penalty the attack's loss is the sum of the three cross-entropies, each of its own input: its
  // input gradients are the tasks' own.
  const LossResult attack = unpenalised->loss(*backbone, clean, adversarial, CFAMC_PHASE_ATTACK);
  CHECK(attack.loss.item<double>() == Approx((attack.scalars["rotation_ce_attack"] + attack.scalars["jigsaw_ce_attack"] +
                                              attack.scalars["selfie_ce_attack"]).item<double>()).epsilon(1e-5));
  attack.loss.backward();
  const double h = direct_log_det({adversarial["rotated"].grad(), adversarial["shuffled"].grad(), adversarial["image"].grad()});
  CHECK(h < 0);  // at most 3 log(1 + 1e-5): the three gradients are not orthogonal

  TensorMap detached;
  for (const auto& item : adversarial) detached.insert(item.key(), item.value().detach());
  const LossResult without = unpenalised->loss(*backbone, clean, detached, CFAMC_PHASE_TRAIN);
  const LossResult with = penalised->loss(*backbone, clean, detached, CFAMC_PHASE_TRAIN);
  REQUIRE(with.scalars.contains("penalty_adv"));
  CHECK_FALSE(without.scalars.contains("penalty_adv"));
  CHECK(with.scalars["penalty_adv"].item<double>() == Approx(h).epsilon(1e-3).margin(1e-6));
  double six = 0;
  for (const char* task : {"rotation_", "jigsaw_", "selfie_"})
    for (const char* term : {"ce_clean", "ce_adv"}) six += without.scalars[std::string(task) + term].item<double>();
  CHECK(without.loss.item<double>() == Approx(six / 6).epsilon(1e-5));
  CHECK(with.loss.item<double>() == Approx(six / 6 + h).epsilon(1e-4).margin(1e-6));

  // The penalty's own gradient (create_graph through the plugin boundary) reaches the shared trunk and both copies.
  const TensorMap weights = backbone->tensors(CFAMC_ROLE_PARAMETER);
  const std::vector<std::string> names = {"conv1.weight", "layer3.0.conv1.weight", "layer4.0.conv1.weight",
                                          "layer4_copy1.0.conv1.weight"};
  std::vector<at::Tensor> targets;
  for (const auto& name : names) targets.push_back(weights[name]);
  const auto gradients = torch::autograd::grad({with.loss - without.loss}, targets);
  for (size_t i = 0; i < names.size(); ++i) {
    INFO(names[i]);
    CHECK(gradients[i].isfinite().all().item<bool>());
    CHECK(gradients[i].abs().sum().item<double>() > 0);
  }
}

namespace {

// A short adversarial run on Fashion-MNIST at 8x8 (2x2 patches and tiles) with resnet18 and a small attention
// pooling: SGD at lr 0.01 (selfie's raw dot-product logits start in the hundreds; at 0.05 its loss climbs
// first) and PGD(8/255, 2/255) shortened.
struct StagedRun {
  std::string objective;  // the [objective] plugin
  int copies;             // the backbone's last_stage_copies
  int images, batch, epochs, pgd_steps;
  int steps_per_epoch() const { return images / batch; }
  std::string toml() const {
    return "[run]\ndevice = \"cpu\"\n[data]\ndataset = \"fashion_mnist\"\ntrain_subset = " + std::to_string(images) +
           "\ntest_subset = 100\n[views.views]\ncount = 1\nsize = 8\ncrop = false\nflip = 0.0\njitter = 0.0\n"
           "grayscale = 0.0\n[train]\nepochs = " + std::to_string(epochs) + "\nbatch_size = " + std::to_string(batch) +
           "\noptimizer = \"sgd\"\nlr = 0.01\nmomentum = 0.9\nweight_decay = 3e-4\nschedule = \"constant\"\n"
           "log_every = 1\ncheckpoint_every = 1000\n[backbone]\nplugin = \"resnet18\"\nin_channels = 1\n"
           "last_stage_copies = " + std::to_string(copies) + "\n[objective]\nplugin = \"" + objective +
           "\"\nlayers = 1\nheads = 4\nfeedforward = 64\n[attack]\nplugin = \"pgd\"\nepsilon = \"8/255\"\n"
           "step_size = \"2/255\"\nsteps = " + std::to_string(pgd_steps) + "\n";
  }
};

// Runs `run` and gives its metrics lines, a line a step.
std::vector<nlohmann::json> metrics_of(const StagedRun& run, const cfamc::test::TempDir& dir) {
  const auto file = dir.write("staged.toml", run.toml());
  const auto out = cfamc::test::run_host("--config " + file.string() + " --set run.dir=" + dir.path().string());
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  auto lines = cfamc::test::read_lines(dir.path() / "metrics.jsonl");
  REQUIRE(lines.size() == static_cast<size_t>(run.steps_per_epoch() * run.epochs));
  return lines;
}

// The mean of `key` over the metrics lines of epoch `epoch`.
double epoch_average(const std::vector<nlohmann::json>& lines, const StagedRun& run, const std::string& key, int epoch) {
  double sum = 0;
  const int steps = run.steps_per_epoch();
  for (int i = steps * epoch; i < steps * (epoch + 1); ++i) sum += lines.at(i)[key].get<double>();
  return sum / steps;
}

}  // namespace

TEST_CASE("selfie: in a short adversarial Fashion-MNIST run the masked-patch loss falls", "[pretext][run]") {
  const StagedRun run{"selfie", 1, 128, 32, 6, 3};
  cfamc::test::TempDir dir;
  const auto lines = metrics_of(run, dir);
  for (const char* key : {"ce_clean", "ce_adv"}) {
    const double first = epoch_average(lines, run, key, 0), last = epoch_average(lines, run, key, run.epochs - 1);
    INFO(key << " " << first << " -> " << last);
    CHECK(last < first - 0.1);
  }
}

// The ensemble's loss is dominated by selfie's summed raw-logit cross-entropies, which fall fast; rotation's and
// jigsaw's barely move in so few steps, so the check is on the loss the optimiser minimises.
TEST_CASE("pretext_ensemble: in a short adversarial Fashion-MNIST run the ensemble's loss falls", "[pretext][run]") {
  const StagedRun run{"pretext_ensemble", 2, 64, 16, 5, 1};
  cfamc::test::TempDir dir;
  const auto lines = metrics_of(run, dir);
  for (const char* task : {"rotation_", "jigsaw_", "selfie_"})
    for (const char* term : {"ce_clean", "ce_adv", "pretext_accuracy_adv"}) CHECK(lines.back().contains(task + std::string(term)));
  CHECK(lines.back().contains("penalty_adv"));
  const double first = epoch_average(lines, run, "loss", 0), last = epoch_average(lines, run, "loss", run.epochs - 1);
  INFO("loss " << first << " -> " << last);
  CHECK(last < first - 0.1);
}
