// A trained encoder outlives its run: --evaluate-only judges a checkpoint later, [init] starts another run
// from it, and `export` takes it to Python (torchvision loads it and computes the same features).
#include "torch_catch.hpp"

#include <ATen/ATen.h>

#include <fstream>

#include "make_component.hpp"
#include "run/model_file.hpp"
#include "safetensors.hpp"
#include "support.hpp"
#include "tiny_run.hpp"
#include "train/checkpoint.hpp"

using cfamc::test::kTinyRun;
using cfamc::test::read_json;
using cfamc::test::run_host;
using cfamc::test::run_shell;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

const char* const kProbe = R"(
[[evaluate]]
plugin = "linear_probe"
epochs = 2
)";

// A tiny run in `dir`/<name>, its run file beside it.
struct Run {
  const cfamc::test::TempDir& dir;
  std::string name;
  fs::path file;
  Run(const cfamc::test::TempDir& d, const std::string& n, const std::string& extra) : dir(d), name(n) {
    file = dir.write(n + ".toml", std::string(kTinyRun) + extra);
  }
  fs::path run_dir() const { return dir.path() / name; }
  fs::path checkpoint(int step) const {
    char file_name[32];
    std::snprintf(file_name, sizeof(file_name), "step-%09d.pt", step);
    return run_dir() / "checkpoints" / file_name;
  }
  cfamc::test::Outcome host(const std::string& more = "") const {
    return run_host("--config " + file.string() + " --set run.dir=" + run_dir().string() + " " + more);
  }
};

at::Tensor saved_tensor(const fs::path& checkpoint, const std::string& name) {
  return cfamc::host::load_checkpoint(checkpoint)[name];
}

}  // namespace

TEST_CASE("evaluate-only reproduces the run's evaluation on its newest checkpoint and records which", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const Run run(dir, "run", kProbe);
  REQUIRE(run.host().exit_code == 0);
  const double trained = read_json(run.run_dir() / "summary.json")["eval"]["linear_probe"]["accuracy"];

  const auto again = run.host("--evaluate-only");
  INFO(again.output);
  REQUIRE(again.exit_code == 0);
  const auto summary = read_json(run.run_dir() / "summary.json");
  CHECK(summary["eval"]["linear_probe"]["accuracy"].get<double>() == trained);
  CHECK(summary["eval"]["linear_probe"]["checkpoint_step"] == 16);
  CHECK_THAT(summary["eval"]["linear_probe"]["checkpoint"].get<std::string>(), Contains("step-000000016.pt"));
  CHECK(summary.contains("train"));  // the training run's summary is kept

  const auto earlier = run.host("--evaluate-only --checkpoint " + run.checkpoint(2).string());
  REQUIRE(earlier.exit_code == 0);
  const auto after = read_json(run.run_dir() / "summary.json")["eval"]["linear_probe"];
  CHECK(after["checkpoint_step"] == 2);
  CHECK(after["accuracy"].get<double>() != trained);
}

TEST_CASE("a missing, truncated or foreign checkpoint is refused naming it, with exit 2 or 4", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const Run run(dir, "run", kProbe);
  const auto none = run.host("--evaluate-only");
  CHECK(none.exit_code == 2);
  CHECK_THAT(none.output, Contains("no usable checkpoint") && Contains("--checkpoint"));
  REQUIRE(run.host("--until-step 2").exit_code == 0);

  const auto missing = run.host("--evaluate-only --checkpoint " + (dir.path() / "nope.pt").string());
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.output, Contains("nope.pt does not exist"));

  std::ifstream in(run.checkpoint(2), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const fs::path truncated = dir.write("truncated.pt", bytes.substr(0, bytes.size() / 2));
  const auto damaged = run.host("--evaluate-only --checkpoint " + truncated.string());
  CHECK(damaged.exit_code == 4);
  CHECK_THAT(damaged.output, Contains("truncated.pt"));
  const auto export_damaged = run_host("export --checkpoint " + truncated.string() + " --out " +
                                       (dir.path() / "x.safetensors").string());
  CHECK(export_damaged.exit_code == 4);
  CHECK_FALSE(fs::exists(dir.path() / "x.safetensors"));

  const auto wider = run.host("--evaluate-only --set backbone.width=16 --checkpoint " + run.checkpoint(2).string());
  CHECK(wider.exit_code == 2);
  CHECK_THAT(wider.output, Contains("other options than this run's [backbone]: width: 8 -> 16"));

  const auto other = run.host("--evaluate-only --set backbone.plugin=resnet18 --unset backbone.width --checkpoint " +
                              run.checkpoint(2).string());
  CHECK(other.exit_code == 2);
  CHECK_THAT(other.output, Contains("holds a 'convnet' backbone") && Contains("'resnet18'"));

  const auto unwritable = run_host("export --checkpoint " + run.checkpoint(2).string() + " --out " +
                                   (dir.path() / "no-such-folder" / "x.safetensors").string());
  CHECK(unwritable.exit_code == 2);
  CHECK_THAT(unwritable.output, Contains("no-such-folder/x.safetensors"));
}

TEST_CASE("[init] starts the backbone from another run's checkpoint, and --resume wins over it", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const Run source(dir, "source", "");
  REQUIRE(source.host().exit_code == 0);
  // A learning rate too small to move the weights: what the run starts from is what it saves at step 1.
  const std::string init = "\n[init]\ncheckpoint = \"source/checkpoints/step-000000016.pt\"\n";
  const Run started(dir, "started", init);
  const auto outcome = started.host("--until-step 1 --set train.lr=1e-12");
  INFO(outcome.output);
  REQUIRE(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Contains("init: backbone starts from"));
  const std::string weight = "backbone/conv0.weight";
  CHECK(at::allclose(saved_tensor(started.checkpoint(1), weight), saved_tensor(source.checkpoint(16), weight), 0, 1e-6));
  // The objective was not asked for: it keeps its seeded start (the source's trained one differs).
  const std::string head = "objective/pre_feature.0.weight";
  const at::Tensor own = saved_tensor(started.checkpoint(1), head);
  CHECK_FALSE(at::allclose(own, saved_tensor(source.checkpoint(16), head), 0, 1e-6));

  const auto resumed = started.host("--resume --until-step 2 --set train.lr=1e-12");
  CHECK(resumed.exit_code == 0);
  CHECK_THAT(resumed.output, Contains("resumed from"));
  CHECK_THAT(resumed.output, !Contains("init: backbone"));

  const Run mismatched(dir, "mismatched", init);
  const auto refused = mismatched.host("--until-step 1 --set backbone.width=4");
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.output, Contains("other options than this run's [backbone]: width: 8 -> 4"));
  const auto bad_list = mismatched.host("--validate --set 'init.components=[\"head\"]'");
  CHECK(bad_list.exit_code == 2);
  CHECK_THAT(bad_list.output, Contains("init.components: 'head'"));
}

TEST_CASE("export: torchvision's resnet18 loads the encoder strictly and computes the same features",
          "[checkpoint_use][python]") {
  cfamc::test::TempDir dir;
  const std::string backbone = "in_channels = 1\nbranches = 2\nmean = [0.3]\nstd = [0.4]\n";
  const Run run(dir, "run", "");
  REQUIRE(run.host("--until-step 1 --set train.batch_size=20 --set data.train_subset=40 --unset backbone.width "
                   "--set backbone.plugin=resnet18 --set backbone.branches=2 --set backbone.mean=[0.3] "
                   "--set backbone.std=[0.4]").exit_code == 0);
  const fs::path checkpoint = run.checkpoint(1);
  for (int branch : {0, 1}) {
    const fs::path exported = dir.path() / ("encoder" + std::to_string(branch) + ".safetensors");
    const auto written = run_host("export --checkpoint " + checkpoint.string() + " --out " + exported.string() +
                                  " --bn-branch " + std::to_string(branch));
    INFO(written.output);
    REQUIRE(written.exit_code == 0);

    auto resnet = cfamc::test::make<cfamc::host::Backbone>(CFAMC_KIND_BACKBONE, "resnet18", backbone);
    cfamc::host::load_component(*resnet, "backbone", cfamc::host::load_checkpoint(checkpoint), checkpoint);
    resnet->set_training(false);
    cfamc::host::TensorMap probe;
    probe.insert("x", at::rand({3, 1, 20, 20}, at::detail::createCPUGenerator(7)));
    {
      at::NoGradGuard no_grad;
      probe.insert("features", resnet->forward(probe["x"], branch));
    }
    const fs::path probe_file = dir.path() / "probe.safetensors";
    cfamc::host::write_safetensors(probe_file, probe, {});
    const auto python = run_shell(std::string(CFAMC_TEST_PYTHON) + " " + CFAMC_SOURCE_DIR +
                                  "/tests/python/torchvision_features.py " + exported.string() + " " + probe_file.string());
    INFO(python.output);
    CHECK(python.exit_code == 0);
    CHECK_THAT(python.output, Contains("bn_branch " + std::to_string(branch)));
  }
}

TEST_CASE("an evaluator that fine-tunes the encoder leaves the next one the pre-trained weights", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const std::string finetune = R"(
[attacks.pgd]
plugin = "pgd"
epsilon = 0.05
step_size = 0.02
steps = 2

[[evaluate]]
id = "aff"
plugin = "finetune"
mode = "aff"
training = "madry"
train_attack = "pgd"
epochs = 1
batch_size = 50
lr = 0.5
attacks = ["pgd"]
robust_max_images = 20
save_classifier = true
)";
  const Run run(dir, "run", std::string(kProbe) + finetune);
  REQUIRE(run.host("--until-step 2").exit_code == 0);
  const Run probe_only(dir, "probe_only", kProbe);
  const auto alone = probe_only.host("--evaluate-only --checkpoint " + run.checkpoint(2).string());
  REQUIRE(alone.exit_code == 0);
  // finetune runs after linear_probe in the file: so here it comes first, and must change nothing after it.
  const Run reordered(dir, "reordered", finetune + kProbe);
  const auto after_finetune = reordered.host("--evaluate-only --checkpoint " + run.checkpoint(2).string());
  INFO(after_finetune.output);
  REQUIRE(after_finetune.exit_code == 0);
  const auto probe = [](const Run& r) { return read_json(r.run_dir() / "summary.json")["eval"]["linear_probe"]["accuracy"]; };
  CHECK(probe(reordered) == probe(probe_only));

  // The classifier the fine-tuning saved: the encoder it trained and its head, exported as torchvision's fc.
  const fs::path classifier = reordered.run_dir() / "artifacts" / "aff" / "classifier.pt";
  REQUIRE(fs::exists(classifier));
  const fs::path exported = dir.path() / "classifier.safetensors";
  const auto written = run_host("export --checkpoint " + classifier.string() + " --out " + exported.string());
  INFO(written.output);
  REQUIRE(written.exit_code == 0);
  std::ifstream in(exported, std::ios::binary);
  uint64_t length = 0;
  in.read(reinterpret_cast<char*>(&length), 8);
  std::string header(length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(length));
  const auto json = nlohmann::json::parse(header);
  CHECK(json["fc.weight"]["shape"] == nlohmann::json::array({10, 32}));
  CHECK(json["fc.bias"]["shape"] == nlohmann::json::array({10}));
  CHECK(json["__metadata__"]["format"] == "cfamc-classifier");
  CHECK(json["__metadata__"]["num_classes"] == "10");
  CHECK(json.contains("conv0.weight"));
  // The fine-tuned encoder, not the pre-trained one.
  CHECK_FALSE(at::equal(cfamc::host::load_checkpoint(classifier)["backbone/conv0.weight"],
                        saved_tensor(run.checkpoint(2), "backbone/conv0.weight")));
}

TEST_CASE("a BatchNorm set the backbone lacks is refused before training, naming the key", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const Run run(dir, "run", std::string(kProbe) + "bn_branch = 1\n");
  const auto refused = run.host("--until-step 1");
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.output, Contains("evaluate.linear_probe.bn_branch = 1") && Contains("1 BatchNorm set(s)"));
  CHECK_FALSE(fs::exists(run.checkpoint(1)));
  const auto missing_init = Run(dir, "init", "\n[init]\ncheckpoint = \"nowhere.pt\"\n").host("--until-step 1");
  CHECK(missing_init.exit_code == 2);
  CHECK_THAT(missing_init.output, Contains("init.checkpoint") && Contains("nowhere.pt does not exist"));
}

TEST_CASE("an attack sequence from the run file reports each attack and its final robust accuracy", "[checkpoint_use][sequence]") {
  cfamc::test::TempDir dir;
  const Run run(dir, "run", R"(
[attacks.pgd]
plugin = "pgd"
epsilon = 0.05
step_size = 0.02
steps = 2

[attacks.square]
plugin = "square"
epsilon = 0.05
queries = 20

[attack_sequences]
aa = ["pgd", "square"]

[[evaluate]]
plugin = "linear_probe"
epochs = 2
attacks = ["pgd", "aa"]
robust_max_images = 50
)");
  REQUIRE(run.host("--until-step 2").exit_code == 0);
  const auto evaluated = run.host("--evaluate-only");
  INFO(evaluated.output);
  REQUIRE(evaluated.exit_code == 0);
  const auto probe = read_json(run.run_dir() / "summary.json")["eval"]["linear_probe"];
  const auto sequence = probe["attack_sequences"]["aa"];
  CHECK(sequence["images"] == 50);
  CHECK(probe["robust_accuracy"]["aa"].get<double>() <= probe["robust_accuracy"]["pgd"].get<double>());
  CHECK(probe["robust_accuracy"]["aa"].get<double>() == Approx(sequence["square"]["robust_accuracy"].get<double>()));
  CHECK(sequence["square"]["gradient_calls"] == 0);

  const auto unknown = run.host("--validate --set 'attack_sequences.bb=[\"pgd\", \"nope\"]'");
  CHECK(unknown.exit_code == 2);
  CHECK_THAT(unknown.output, Contains("attack_sequences.bb names 'nope', but there is no [attacks.nope]"));
}

TEST_CASE("tensors of another shape or name are refused naming the tensor and both shapes", "[checkpoint_use]") {
  auto narrow = cfamc::test::make<cfamc::host::Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 4\nin_channels = 1");
  auto wide = cfamc::test::make<cfamc::host::Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8\nin_channels = 1");
  cfamc::host::TensorMap saved;
  for (const auto& item : wide->tensors(CFAMC_ROLE_PARAMETER)) saved.insert("backbone/" + item.key(), item.value());
  for (const auto& item : wide->tensors(CFAMC_ROLE_BUFFER)) saved.insert("backbone/" + item.key(), item.value());
  CHECK_THROWS_WITH(cfamc::host::load_component(*narrow, "backbone", saved, "wide.pt"),
                    Contains("wide.pt: 'backbone/conv0.weight' has shape [8, 1, 3, 3] there but [4, 1, 3, 3]"));
  saved.insert("backbone/extra", at::zeros({1}));
  CHECK_THROWS_WITH(cfamc::host::load_component(*wide, "backbone", saved, "wide.pt"),
                    Contains("wide.pt has 'backbone/extra', which plugin 'convnet'"));
}

TEST_CASE("resume refuses an attack state of another type, naming the checkpoint and the tensor", "[checkpoint_use]") {
  cfamc::test::TempDir dir;
  const Run run(dir, "pgd", "\n[attack]\nplugin = \"pgd\"\nsteps = 1\n");
  REQUIRE(run.host("--until-step 2").exit_code == 0);
  cfamc::host::TensorMap tensors = cfamc::host::load_checkpoint(run.checkpoint(2));
  REQUIRE(tensors.contains("attack/rng.state"));
  tensors["attack/rng.state"] = tensors["attack/rng.state"].to(torch::kFloat);
  cfamc::host::write_checkpoint_file(run.checkpoint(2), tensors);
  const auto resumed = run.host("--resume");
  CHECK(resumed.exit_code == 1);
  CHECK_THAT(resumed.output, Contains(run.checkpoint(2).string() + " holds 'attack/rng.state' as Float"));
}
