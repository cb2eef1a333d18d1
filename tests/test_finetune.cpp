// The finetune evaluator (slf, alf, aff; Madry and TRADES) driven through the host's EvalServices on a few
// hundred Fashion-MNIST images, and pgd's TRADES start (normal_start). The host restores the encoder after
// `evaluate` in run_evaluation, not in EvalServices: these tests see the encoder as the evaluator left it.
#include "torch_catch.hpp"

#include "data/datasets.hpp"
#include "eval/eval_services.hpp"
#include "failure.hpp"
#include "make_component.hpp"
#include "plugins/components.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"
#include "support.hpp"

using namespace cfamc::host;
using cfamc::test::make;
using Catch::Matchers::Contains;

namespace {

// The first images of each Fashion-MNIST split (Debian's package), read once.
struct Fashion {
  Fashion() {
    const ImageSet train_set = load_split({"fashion_mnist", ""}, "train");
    const ImageSet test_set = load_split({"fashion_mnist", ""}, "test");
    train = {train_set.images.slice(0, 0, 600).clone(), train_set.labels.slice(0, 0, 600).clone()};
    test = {test_set.images.slice(0, 0, 200).clone(), test_set.labels.slice(0, 0, 200).clone()};
  }
  std::map<std::string, DatasetSplit> splits() const { return {{"train", train}, {"test", test}}; }
  DatasetSplit train, test;
};

const Fashion& fashion() {
  static const Fashion instance;
  return instance;
}

// A stand-in for a pre-trained encoder: a small convnet whose BatchNorm statistics are those of the training
// images (at initialisation they are 0 and 1, and the features of every image nearly alike).
std::unique_ptr<Backbone> small_convnet() {
  auto convnet = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "in_channels = 1\nwidth = 8");
  torch::NoGradGuard no_grad;
  convnet->set_training(true);
  const at::Tensor images = fashion().train.images.to(torch::kFloat).div(255);
  for (int pass = 0; pass < 30; ++pass) convnet->forward(images.slice(0, 100 * (pass % 6), 100 * (pass % 6 + 1)));
  convnet->set_training(false);
  return convnet;
}

std::unique_ptr<Evaluator> finetune(const std::string& toml, int64_t feature_dim) {
  return make<Evaluator>(CFAMC_KIND_EVALUATOR, "finetune", toml, feature_dim);
}

// Every tensor of the encoder, copied.
TensorMap snapshot(const Backbone& backbone) {
  TensorMap copy;
  for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER})
    for (const auto& item : backbone.tensors(role)) copy.insert(item.key(), item.value().detach().clone());
  return copy;
}

// The names of the tensors that differ from `before`.
std::vector<std::string> changed(const Backbone& backbone, const TensorMap& before) {
  std::vector<std::string> names;
  for (const auto& item : snapshot(backbone))
    if (!torch::equal(item.value(), before[item.key()])) names.push_back(item.key());
  return names;
}

double metric(const nlohmann::json& metrics, const std::string& pointer) {
  return metrics.at(nlohmann::json::json_pointer(pointer)).get<double>();
}

// Accuracies are fractions, and on the attacked subset no attack beats the clean accuracy.
void check_report(const nlohmann::json& metrics, const std::vector<std::string>& attacks) {
  for (const char* key : {"/accuracy", "/train_accuracy", "/robust_subset/clean_accuracy"}) {
    INFO(key);
    CHECK(metric(metrics, key) >= 0);
    CHECK(metric(metrics, key) <= 1);
  }
  const double clean = metric(metrics, "/robust_subset/clean_accuracy");
  for (const auto& id : attacks) {
    INFO(id);
    CHECK(metric(metrics, "/robust_accuracy/" + id) >= 0);
    CHECK(metric(metrics, "/robust_accuracy/" + id) <= clean);
  }
  if (attacks.size() > 1) CHECK(metric(metrics, "/robust_accuracy/worst_case") <= clean);
}

// The heads a services table's save_classifier received, by artifact name (the host's own may not exist).
std::vector<std::pair<std::string, TensorMap>>& saved_heads() {
  static std::vector<std::pair<std::string, TensorMap>> saved;
  return saved;
}

cfamc_eval_services recording_saves(const EvalServices& services) {
  cfamc_eval_services table = *services.get();
  table.save_classifier = [](void*, const char* name, const cfamc_named_tensors* head) -> cfamc_error* {
    TensorMap copy;
    for (const auto& item : to_map(head)) copy.insert(item.key(), item.value().detach().clone());
    saved_heads().emplace_back(name, copy);
    return nullptr;
  };
  return table;
}

// The Failure an expression throws, or FAIL.
template <class F>
Failure failure_of(F&& f) {
  try {
    f();
  } catch (const Failure& e) {
    return e;
  }
  FAIL("no Failure was thrown");
  return Failure(ExitCode::other, "");
}

}  // namespace

TEST_CASE("finetune: slf and alf leave the encoder as it was, aff trains it, all report fractions, robust <= clean",
          "[finetune]") {
  const Fashion& data = fashion();
  auto attack = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "epsilon = 0.1\nstep_size = 0.04\nsteps = 2");
  auto trades_start = make<Attack>(CFAMC_KIND_ATTACK, "pgd",
                                   "epsilon = 0.1\nstep_size = 0.04\nsteps = 2\nrandom_start = false\nnormal_start = 0.001");
  cfamc::test::TempDir dir;
  const std::string common = "epochs = 2\nbatch_size = 50\nlr = 0.1\nrobust_max_images = 60\nrobust_batch_size = 30\n";
  for (const auto& [mode, training, trains_encoder] :
       {std::tuple{"slf", "trades", false}, std::tuple{"alf", "madry", false}, std::tuple{"aff", "trades", true},
        std::tuple{"aff", "madry", true}}) {
    INFO(mode << " " << training);
    auto encoder = small_convnet();
    const TensorMap before = snapshot(*encoder);
    auto evaluator = finetune(common + "mode = \"" + mode + "\"\ntraining = \"" + training + "\"\n" +
                                  (std::string(mode) == "slf" ? "" : "train_attack = \"trades_start\"\n"),
                              encoder->feature_dim());
    EvalServices services(*encoder, nullptr, data.splits(), {{"pgd", attack.get()}, {"trades_start", trades_start.get()}},
                          dir.path());
    evaluator->evaluate(*services.get());
    const std::vector<std::string> moved = changed(*encoder, before);
    if (trains_encoder) {
      // Every convolution and BatchNorm weight learns; the running statistics follow the train-mode passes.
      for (const char* name : {"conv0.weight", "conv2.weight", "bn1.0.weight", "bn2.0.running_mean"}) {
        INFO(name);
        CHECK(std::find(moved.begin(), moved.end(), name) != moved.end());
      }
    } else {
      CHECK(moved.empty());
    }
    for (const auto& p : encoder->parameters()) CHECK_FALSE(p.grad().defined());  // no gradients left behind
    const auto& metrics = services.metrics();
    check_report(metrics, {"pgd", "trades_start"});
    CHECK(metric(metrics, "/epochs") == 2);
    CHECK(metric(metrics, "/robust_subset/images") == 60);
    // Ten classes: each learns something in two epochs; a head alone on this untrained encoder's 32 features
    // learns slowly (about 0.25), the encoder with it faster.
    INFO("accuracy " << metric(metrics, "/accuracy"));
    CHECK(metric(metrics, "/accuracy") > (trains_encoder ? 0.3 : 0.15));
  }
}

TEST_CASE("finetune: a head trained on adversarial examples (alf) is more robust than a clean one (slf)", "[finetune]") {
  // On raw pixels, so that the head is the whole classifier: standard training leaves a linear model on
  // Fashion-MNIST nearly defenceless at epsilon 0.1; adversarial training does not.
  const Fashion& data = fashion();
  auto attack = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "epsilon = 0.1\nstep_size = 0.025\nsteps = 10");
  cfamc::test::TempDir dir;
  const std::string common = "epochs = 5\nbatch_size = 50\nlr = 0.05\nmilestones = [4]\nrobust_batch_size = 200\n";
  std::map<std::string, nlohmann::json> metrics;
  for (const char* mode : {"slf", "alf"}) {
    auto evaluator = finetune(common + "mode = \"" + mode + "\"\ntraining = \"madry\"\ntrain_attack = \"pgd\"", 784);
    EvalServices services(pixel_encoder({1, 28, 28}), data.splits(), {{"pgd", attack.get()}}, dir.path());
    evaluator->evaluate(*services.get());
    metrics[mode] = services.metrics();
    check_report(services.metrics(), {"pgd"});
  }
  const double slf = metric(metrics["slf"], "/robust_accuracy/pgd"), alf = metric(metrics["alf"], "/robust_accuracy/pgd");
  INFO("clean slf " << metric(metrics["slf"], "/accuracy") << ", alf " << metric(metrics["alf"], "/accuracy")
                    << "; PGD-10 slf " << slf << ", alf " << alf);
  CHECK(metric(metrics["slf"], "/accuracy") > 0.6);
  CHECK(alf > slf + 0.15);
}

TEST_CASE("finetune: TRADES with beta 0 trains the head exactly as clean training does, beta 6 does not", "[finetune]") {
  const Fashion& data = fashion();
  auto attack = make<Attack>(CFAMC_KIND_ATTACK, "pgd",
                             "epsilon = 0.1\nstep_size = 0.025\nsteps = 3\nrandom_start = false\nnormal_start = 0.001");
  cfamc::test::TempDir dir;
  const std::string common = "epochs = 2\nbatch_size = 100\nlr = 0.05\nsave_classifier = true\ntrain_attack = \"pgd\"\n";
  saved_heads().clear();
  for (const char* mode : {"mode = \"slf\"", "mode = \"alf\"\nbeta = 0.0", "mode = \"alf\"\nbeta = 6.0"}) {
    auto evaluator = finetune(common + mode, 784);
    EvalServices services(pixel_encoder({1, 28, 28}), data.splits(), {{"pgd", attack.get()}}, dir.path());
    const cfamc_eval_services table = recording_saves(services);
    evaluator->evaluate(table);
  }
  REQUIRE(saved_heads().size() == 3);
  for (const auto& [name, head] : saved_heads()) {
    CHECK(name == "classifier.pt");
    CHECK(head["weight"].sizes() == at::IntArrayRef({10, 784}));
    CHECK(head["bias"].sizes() == at::IntArrayRef({10}));
  }
  const TensorMap &slf = saved_heads()[0].second, &beta0 = saved_heads()[1].second, &beta6 = saved_heads()[2].second;
  CHECK(torch::equal(slf["weight"], beta0["weight"]));
  CHECK(torch::equal(slf["bias"], beta0["bias"]));
  CHECK((slf["weight"] - beta6["weight"]).abs().max().item<double>() > 1e-3);
}

TEST_CASE("finetune: save_classifier hands encoder and head to the host, or fails before training without it", "[finetune]") {
  const Fashion& data = fashion();
  auto encoder = small_convnet();
  cfamc::test::TempDir dir;
  auto evaluator = finetune("epochs = 1\nbatch_size = 100\nsave_classifier = true", encoder->feature_dim());
  EvalServices services(*encoder, nullptr, data.splits(), {}, dir.path());
  SECTION("a host without save_classifier: refused before any training or report") {
    cfamc_eval_services old_host = *services.get();
    old_host.save_classifier = nullptr;
    const Failure e = failure_of([&] { evaluator->evaluate(old_host); });
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("save_classifier"));
    CHECK(services.metrics().empty());
  }
  SECTION("the host's save_classifier receives the encoder as fine-tuned, and the head") {
    auto aff = finetune("mode = \"aff\"\ntraining = \"madry\"\ntrain_attack = \"pgd\"\nepochs = 1\nbatch_size = 100\n"
                        "save_classifier = true",
                        encoder->feature_dim());
    auto attack = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 1");
    EvalServices with_attack(*encoder, nullptr, data.splits(), {{"pgd", attack.get()}}, dir.path());
    const TensorMap before = snapshot(*encoder);
    std::vector<std::string> saved_files, moved_when_saved;
    with_attack.set_classifier_saver([&](const std::filesystem::path& file, const Backbone& backbone, const TensorMap& head) {
      saved_files.push_back(file.string());
      moved_when_saved = changed(backbone, before);
      CHECK(&backbone == encoder.get());
      CHECK(head["weight"].sizes() == at::IntArrayRef({10, encoder->feature_dim()}));
      CHECK(head["bias"].sizes() == at::IntArrayRef({10}));
    });
    aff->evaluate(*with_attack.get());
    CHECK(saved_files == std::vector<std::string>{(dir.path() / "classifier.pt").string()});
    CHECK_THAT(moved_when_saved, Catch::Matchers::VectorContains(std::string("conv0.weight")));
    CHECK(with_attack.metrics().contains("accuracy"));
  }
}

TEST_CASE("finetune refuses bad settings with errors that name the option", "[finetune]") {
  SECTION("at create") {
    for (const auto& [toml, named] : {std::pair{"mode = \"full\"", "mode"}, std::pair{"mode = \"alf\"", "train_attack"},
                                      std::pair{"mode = \"aff\"\ntraining = \"pgd\"\ntrain_attack = \"a\"", "training"},
                                      std::pair{"mode = \"alf\"\ntrain_attack = \"a\"\nattack_bn = \"train\"", "attack_bn"},
                                      std::pair{"feature = \"representation\"\nsave_classifier = true", "save_classifier"},
                                      std::pair{"milestones = [20, 15]", "milestones"}}) {
      INFO(toml);
      const Failure e = failure_of([&] { finetune(toml, 32); });
      CHECK(e.code() == ExitCode::usage);
      CHECK_THAT(std::string(e.what()), Contains(named));
    }
  }
  SECTION("at evaluate: a train_attack that is not one of the evaluator's attacks") {
    auto encoder = small_convnet();
    auto attack = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 1");
    cfamc::test::TempDir dir;
    auto evaluator = finetune("mode = \"aff\"\ntrain_attack = \"pgd10\"", encoder->feature_dim());
    EvalServices services(*encoder, nullptr, fashion().splits(), {{"pgd", attack.get()}}, dir.path());
    const Failure e = failure_of([&] { evaluator->evaluate(*services.get()); });
    CHECK(e.code() == ExitCode::usage);
    CHECK_THAT(std::string(e.what()), Contains("train_attack = \"pgd10\""));
    CHECK_THAT(std::string(e.what()), Contains("have: pgd"));
  }
}

TEST_CASE("pgd normal_start: TRADES's start x + 0.001 N(0,1), in [0,1] and the ball, refused beside random_start",
          "[finetune][attack]") {
  torch::manual_seed(3);
  // Mid-range pixels, and a border of exact 0 and 1 where the clamp must act.
  at::Tensor x = torch::rand({8, 3, 32, 32}) * 0.8 + 0.1;
  x.select(3, 0).fill_(0);
  x.select(3, 31).fill_(1);
  const cfamc_oracle unused{sizeof(cfamc_oracle), nullptr,
                            [](void*, const cfamc_named_tensors*, cfamc_tensor**) {
                              return make_error(CFAMC_ERROR_RUNTIME, "steps = 0 asks nothing");
                            },
                            nullptr, nullptr};
  TensorMap inputs;
  inputs.insert("x", x);
  auto start = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nrandom_start = false\nnormal_start = 0.001");
  const at::Tensor out = start->perturb(unused, inputs)["x"];
  const at::Tensor inner = (out - x).slice(3, 1, 31);
  INFO("std " << inner.std().item<double>() << ", mean " << inner.mean().item<double>());
  CHECK(inner.std().item<double>() == Approx(0.001).epsilon(0.03));
  CHECK(std::abs(inner.mean().item<double>()) < 1e-4);
  CHECK(out.min().item<double>() >= 0);
  CHECK(out.max().item<double>() <= 1);
  CHECK((out.select(3, 0) == 0).to(torch::kDouble).mean().item<double>() == Approx(0.5).margin(0.05));
  // Another draw from the same generator: a fresh start each call.
  CHECK_FALSE(torch::equal(start->perturb(unused, inputs)["x"], out));
  // A ball narrower than the noise holds it.
  auto narrow = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 0\nrandom_start = false\nnormal_start = 0.001\nepsilon = 0.0005");
  CHECK((narrow->perturb(unused, inputs)["x"] - x).abs().max().item<double>() <= 0.0005 + 1e-7);
  const Failure e = failure_of([] { make<Attack>(CFAMC_KIND_ATTACK, "pgd", "normal_start = 0.001"); });
  CHECK(e.code() == ExitCode::usage);
  CHECK_THAT(std::string(e.what()), Contains("random_start = false"));
}
