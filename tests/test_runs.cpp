// Whole runs through cfamc-host on real data (Fashion-MNIST from Debian's dataset-fashion-mnist):
// the loss falls and the probe beats the untrained control; an interrupted and resumed run ends with the
// same weights as an uninterrupted one; a diverging loss exits 5 keeping the last good checkpoint.
#include "torch_catch.hpp"

#include <nlohmann/json.hpp>

#include "support.hpp"
#include "tiny_run.hpp"
#include "train/checkpoint.hpp"

using cfamc::test::run_host;
using Catch::Matchers::Contains;
using json = nlohmann::json;
using cfamc::test::kTinyRun;
using cfamc::test::read_json;
using cfamc::test::read_lines;

namespace {

const std::string kQuickstart = std::string(CFAMC_SOURCE_DIR) + "/configs/quickstart.toml";

}  // namespace

TEST_CASE("a short EMP-SSL run: loss falls, the probe beats the untrained control", "[run]") {
  cfamc::test::TempDir dir;
  const auto out = run_host("--config " + kQuickstart + " --set run.dir=" + dir.path().string() +
                            " --set run.device=cpu --set data.train_subset=2000 --set data.test_subset=1000" +
                            " --set train.log_every=5 --set train.epochs=2 --set attack.from_epoch=2" +
                            " --set evaluate.0.robust_max_images=100");
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  const auto lines = read_lines(dir.path() / "metrics.jsonl");
  REQUIRE(lines.size() == 8);  // 40 steps, a line every 5
  CHECK(lines.back()["loss"].get<double>() < lines.front()["loss"].get<double>());
  for (const char* key : {"step", "epoch", "lr", "loss", "tcr", "invariance", "images_per_s"}) CHECK(lines.back().contains(key));

  const json summary = read_json(dir.path() / "summary.json");
  CHECK(summary["run"]["seed"] == 0);
  CHECK(summary["run"]["device"] == "cpu");
  CHECK(summary["train"]["steps"] == 40);
  CHECK(summary["train"]["crops_per_s"].get<double>() == Approx(4 * summary["train"]["images_per_s"].get<double>()));
  const double trained = summary["eval"]["linear_probe"]["accuracy"];
  const double untrained = summary["eval"]["linear_probe_untrained"]["accuracy"];
  CHECK(trained > untrained + 0.1);
  CHECK(trained <= 1.0);
  // Robust accuracy under each evaluation attack, and the curve over their epsilons.
  const json& robust = summary["eval"]["linear_probe"]["robust_accuracy"];
  CHECK(robust["pgd8"].get<double>() <= robust["pgd2"].get<double>() + 1e-9);
  CHECK(summary["eval"]["linear_probe"]["robustness_curve"].size() == 4);
  CHECK(std::filesystem::exists(dir.path() / "artifacts" / "linear_probe" / "robustness_curve.svg"));
  CHECK(summary["run"]["attack"] == "free");  // configured, but from epoch 2 of 2: never used
  CHECK(summary["train"]["attack_calls"] == 0);
  CHECK(summary["eval"]["knn"]["accuracy"].get<double>() > 0.5);
  CHECK(summary["eval"].contains("knn_untrained"));
  CHECK(std::filesystem::exists(dir.path() / "resolved.toml"));
  CHECK(std::filesystem::exists(dir.path() / "checkpoints" / "step-000000040.pt"));
}

// Bit-exact in fp32; in bf16 too on the CPU (the same kernels on the same inputs, and no weight cast outlives
// the replay that made it).
TEST_CASE("an interrupted and resumed run ends with the same weights as an uninterrupted one", "[run][resume]") {
  for (const char* precision : {"fp32", "bf16"}) {
    CAPTURE(precision);
    cfamc::test::TempDir dir;
    const auto file = dir.write("tiny.toml", kTinyRun);
    const std::string config = "--config " + file.string() + " --set run.precision=" + precision;
    const std::string whole = (dir.path() / "whole").string(), split = (dir.path() / "split").string();
    REQUIRE(run_host(config + " --set run.dir=" + whole).exit_code == 0);
    const auto first = run_host(config + " --set run.dir=" + split + " --until-step 6");
    REQUIRE(first.exit_code == 0);
    CHECK_THAT(first.output, Contains("--resume"));
    CHECK_FALSE(std::filesystem::exists(split + "/summary.json"));
    const auto second = run_host(config + " --set run.dir=" + split + " --resume");
    INFO(second.output);
    REQUIRE(second.exit_code == 0);
    CHECK_THAT(second.output, Contains("resumed from"));
    CHECK(read_json(whole + "/summary.json")["run"]["precision"] == precision);

    const auto a = cfamc::host::load_checkpoint(whole + "/checkpoints/step-000000016.pt");
    const auto b = cfamc::host::load_checkpoint(split + "/checkpoints/step-000000016.pt");
    REQUIRE(a.size() == b.size());
    int64_t compared = 0;
    for (const auto& item : a) {
      const std::string& name = item.key();
      INFO(name);
      REQUIRE(b.contains(name));
      CHECK(torch::equal(item.value(), b[name]));
      ++compared;
    }
    CHECK(compared > 20);
    // The metrics of the resumed run continue where the first part stopped.
    const auto lines = read_lines(split + "/metrics.jsonl");
    REQUIRE(lines.size() == 8);
    CHECK(lines.back()["step"] == 16);
  }
}

TEST_CASE("free training makes exactly one backward pass per replay and never calls the oracle", "[run][attack]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", std::string(kTinyRun) + "\n[attack]\nplugin = \"free\"\nreplays = 3\n");
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + dir.path().string());
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("attack free, 3 replays per minibatch"));
  const json train = read_json(dir.path() / "summary.json")["train"];
  CHECK(train["steps"] == 16);
  CHECK(train["attack_calls"] == 48);
  CHECK(train["training_backward_passes"] == 48);
  CHECK(train["optimizer_updates"] == 48);
  CHECK(train["oracle_calls"] == 0);
}

TEST_CASE("set attack.plugin swaps the training attack, resuming with another attack is logged", "[run][attack]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", std::string(kTinyRun) + "\n[attack]\nplugin = \"pgd\"\nepsilon = \"4/255\"\n");
  const std::string base = "--config " + file.string() + " --set run.dir=" + dir.path().string();
  const auto first = run_host(base + " --set attack.plugin=fgsm_rs --until-step 4");
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.output, Contains("attack fgsm_rs"));
  const auto second = run_host(base + " --resume");
  INFO(second.output);
  REQUIRE(second.exit_code == 0);
  CHECK_THAT(second.output, Contains("resuming with training attack 'pgd' (the run so far used 'fgsm_rs')"));
  const json summary = read_json(dir.path() / "summary.json");
  CHECK(summary["run"]["attack"] == "pgd");
  CHECK(summary["train"]["oracle_calls"] == 12 * 10);  // 12 resumed steps of PGD-10
}

TEST_CASE("an attack schedule trains clean, then with a growing epsilon", "[run][attack]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", std::string(kTinyRun) + R"(
[attacks.pgd2]
plugin = "pgd"
epsilon = "2/255"
steps = 1

[attacks.pgd8]
plugin = "pgd"
epsilon = "8/255"
steps = 2

[[attack_schedule]]
from_epoch = 1
attack = "pgd2"

[[attack_schedule]]
from_epoch = 2
attack = "pgd8"
)");
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + dir.path().string() + " --set train.epochs=3");
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("epoch 0: training clean"));
  CHECK_THAT(out.output, Contains("epoch 1: training with attack plugin 'pgd' (attacks.pgd2)"));
  CHECK_THAT(out.output, Contains("epoch 2: training with attack plugin 'pgd' (attacks.pgd8)"));
  const json summary = read_json(dir.path() / "summary.json");
  CHECK(summary["train"]["oracle_calls"] == 8 * 1 + 8 * 2);
  CHECK(summary["run"]["attack_schedule"].size() == 2);
  const auto bad = run_host("--config " + file.string() + " --validate --set attack_schedule.1.attack=pgd16");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Contains("attack_schedule names 'pgd16', but there is no [attacks.pgd16]"));
}

TEST_CASE("the weight-gradient accumulation quirk changes training, BatchNorm can be frozen during attacks", "[run][attack]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", std::string(kTinyRun) + "\n[attack]\nplugin = \"pgd\"\nsteps = 2\n");
  const auto final_weights = [&](const std::string& name, const std::string& extra) {
    const std::string run_dir = (dir.path() / name).string();
    const auto out = run_host("--config " + file.string() + " --set run.dir=" + run_dir + " --set train.epochs=1" + extra);
    INFO(out.output);
    REQUIRE(out.exit_code == 0);
    return cfamc::host::load_checkpoint(run_dir + "/checkpoints/step-000000008.pt")["backbone/conv0.weight"];
  };
  const at::Tensor plain = final_weights("plain", "");
  CHECK(torch::equal(plain, final_weights("plain_again", "")));
  CHECK_FALSE(torch::equal(plain, final_weights("quirk", " --set attack.accumulate_weight_grads=true")));
  CHECK_FALSE(torch::equal(plain, final_weights("eval_bn", " --set attack.bn_mode=eval")));
}

TEST_CASE("a run directory with checkpoints is not started over without --fresh", "[run][resume]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", kTinyRun);
  const std::string args = "--config " + file.string() + " --set run.dir=" + dir.path().string() + " --until-step 2";
  REQUIRE(run_host(args).exit_code == 0);
  const auto again = run_host(args);
  CHECK(again.exit_code == 2);
  CHECK_THAT(again.output, Contains("already holds a run"));
  CHECK(std::filesystem::exists(dir.path() / "checkpoints" / "step-000000002.pt"));
  CHECK(run_host(args + " --fresh").exit_code == 0);
}

TEST_CASE("a NaN loss stops the run with exit code 5 and keeps the last good checkpoint", "[run]") {
  cfamc::test::TempDir dir;
  std::string run = kTinyRun;
  run.replace(run.find("[views.crops]"), std::string("[views.crops]").size(), "[views.views]");
  run = run.substr(0, run.find("[objective]")) + "[objective]\nplugin = \"nan_after\"\nfinite_steps = 3\n";
  const auto file = dir.write("nan.toml", run);
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + dir.path().string(),
                            cfamc::test::test_plugin("nan_objective"));
  CHECK(out.exit_code == 5);
  CHECK_THAT(out.output, Contains("error: the training loss became NaN or infinite at or before step 4"));
  CHECK_THAT(out.output, Contains("step-000000002.pt"));
  CHECK(std::filesystem::exists(dir.path() / "checkpoints" / "step-000000002.pt"));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "checkpoints" / "step-000000004.pt"));
}

TEST_CASE("missing data exits 4 naming the file", "[run]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", kTinyRun);
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + dir.path().string() +
                            " --set data.dataset=mnist --set data.root=/nonexistent");
  CHECK(out.exit_code == 4);
  CHECK_THAT(out.output, Contains("error: data file /nonexistent/train-images-idx3-ubyte[.gz] does not exist"));
}

TEST_CASE("a view group the objective needs but the run file lacks is named", "[run]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", kTinyRun);
  const auto out = run_host("--config " + file.string() + " --validate --set objective.group=patches");
  CHECK(out.exit_code == 2);
  CHECK_THAT(out.output, Contains("consumes view group 'patches'; add a [views.patches] table"));
}

namespace {

// A linear probe under a random-start attack (both draw random numbers) and a kNN, with `control` for both.
std::string with_controls(const std::string& control) {
  return std::string(kTinyRun) + R"(
[attacks.rs]
plugin = "fgsm_rs"
epsilon = "8/255"

[[evaluate]]
plugin = "linear_probe"
epochs = 2
attacks = ["rs"]
robust_max_images = 40
control = )" + control + R"(

[[evaluate]]
plugin = "knn"
k = 5
control = )" + control + "\n";
}

}  // namespace

TEST_CASE("the controls draw their own random streams: the trained results are the same with them on and off",
          "[run][control]") {
  cfamc::test::TempDir dir;
  const auto evaluation = [&](const std::string& name, const std::string& control) {
    const auto file = dir.write(name + ".toml", with_controls(control));
    const auto run_dir = dir.path() / name;
    const auto out = run_host("--config " + file.string() + " --set run.dir=" + run_dir.string() + " --set train.epochs=1");
    INFO(out.output);
    REQUIRE(out.exit_code == 0);
    return read_json(run_dir / "summary.json")["eval"];
  };
  const json without = evaluation("off", "false"), untrained = evaluation("untrained", "true"),
             both = evaluation("both", R"(["untrained", "pixels"])");
  CHECK_FALSE(without.contains("linear_probe_untrained"));
  CHECK_FALSE(without.contains("linear_probe_pixels"));
  CHECK_FALSE(untrained.contains("linear_probe_pixels"));
  for (const json* with : {&untrained, &both}) {
    for (const char* id : {"linear_probe", "knn"}) {
      INFO(id);
      CHECK((*with)[id]["accuracy"] == without[id]["accuracy"]);
      // Nor does the pixel control change the untrained one.
      CHECK((*with)[std::string(id) + "_untrained"]["accuracy"] == untrained[std::string(id) + "_untrained"]["accuracy"]);
    }
    CHECK((*with)["linear_probe"]["robust_accuracy"] == without["linear_probe"]["robust_accuracy"]);
    CHECK((*with)["linear_probe"]["robust_subset"] == without["linear_probe"]["robust_subset"]);
  }
  CHECK(both["linear_probe_untrained"]["robust_accuracy"] == untrained["linear_probe_untrained"]["robust_accuracy"]);
  CHECK(both.contains("linear_probe_pixels"));
  CHECK(both.contains("knn_pixels"));
}

TEST_CASE("control = \"pixels\" reports a classifier on raw pixels, clean and attacked end to end, and survives a resume",
          "[run][control]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("pixels.toml", with_controls("\"pixels\""));
  const std::string base = "--config " + file.string() + " --set run.dir=" + dir.path().string();
  const auto first = run_host(base + " --until-step 4");
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  const auto second = run_host(base + " --resume");
  INFO(second.output);
  REQUIRE(second.exit_code == 0);
  const json eval = read_json(dir.path() / "summary.json")["eval"];
  CHECK_FALSE(eval.contains("linear_probe_untrained"));
  const json& pixels = eval["linear_probe_pixels"];
  INFO(pixels.dump());
  // Fashion-MNIST is far from chance on raw pixels, even with 400 training images and 2 epochs.
  CHECK(pixels["accuracy"].get<double>() > 0.5);
  CHECK(pixels["robust_subset"]["images"] == 40);
  const double robust = pixels["robust_accuracy"]["rs"], clean = pixels["robust_subset"]["clean_accuracy"];
  CHECK(robust <= clean);
  CHECK(robust < clean);  // 8/255 through a linear map of the pixels does flip some images
  CHECK(eval["knn_pixels"]["accuracy"].get<double>() > 0.5);
  // Evaluated once, before the first step, and reported again after the resume from the saved file.
  CHECK(read_json(dir.path() / "eval_untrained.json")["linear_probe_pixels"] == pixels);
}

TEST_CASE("control = \"pixels\" refuses an evaluator whose views change the image size, naming the shapes",
          "[run][control]") {
  cfamc::test::TempDir dir;
  // kTinyRun's [views.crops] are 20x20 crops of the 28x28 images.
  const auto file = dir.write("multicrop.toml", std::string(kTinyRun) + R"(
[[evaluate]]
plugin = "multicrop"
group = "crops"
epochs = 1
control = "pixels"
)");
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + dir.path().string());
  CHECK(out.exit_code == 2);
  CHECK_THAT(out.output, Contains("control = \"pixels\" encodes images of the dataset's shape 1x28x28, not 1x20x20"));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "checkpoints" / "step-000000002.pt"));
}

TEST_CASE("TensorBoard reads every metrics.jsonl scalar and the final evaluation from the run directory",
          "[run][tensorboard]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("tiny.toml", std::string(kTinyRun) + "\n[[evaluate]]\nplugin = \"knn\"\n");
  const auto out = run_host("--config " + file.string() + " --set run.dir=" + (dir.path() / "run").string());
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  const json read = cfamc::test::read_with_tensorboard(dir.path() / "run" / "tensorboard");
  const auto lines = read_lines(dir.path() / "run" / "metrics.jsonl");
  REQUIRE(lines.size() == 8);
  for (const char* key : {"loss", "lr", "epoch"}) {
    const json& points = read["train/" + std::string(key)];
    REQUIRE(points.size() == lines.size());
    for (size_t i = 0; i < lines.size(); ++i) {
      CHECK(points[i][0] == lines[i]["step"]);
      CHECK(static_cast<float>(points[i][1].get<double>()) == static_cast<float>(lines[i][key].get<double>()));
    }
  }
  const json summary = read_json(dir.path() / "run" / "summary.json");
  REQUIRE(read.contains("eval/knn/accuracy"));
  CHECK(read["eval/knn/accuracy"][0][0] == 16);
  CHECK(static_cast<float>(read["eval/knn/accuracy"][0][1].get<double>()) ==
        static_cast<float>(summary["eval"]["knn"]["accuracy"].get<double>()));

  // A resume from an older checkpoint trains steps again: TensorBoard keeps one point per step, as metrics.jsonl.
  const std::string resumed = "--config " + file.string() + " --set run.dir=" + (dir.path() / "resumed").string() +
                              " --set train.log_every=1";
  REQUIRE(run_host(resumed + " --until-step 6").exit_code == 0);
  std::filesystem::remove(dir.path() / "resumed" / "checkpoints" / "step-000000006.pt");
  REQUIRE(run_host(resumed + " --resume --until-step 8").exit_code == 0);
  const auto resumed_lines = read_lines(dir.path() / "resumed" / "metrics.jsonl");
  const json again = cfamc::test::read_with_tensorboard(dir.path() / "resumed" / "tensorboard");
  REQUIRE(resumed_lines.size() == 8);
  REQUIRE(again["train/loss"].size() == resumed_lines.size());
  for (size_t i = 0; i < resumed_lines.size(); ++i) {
    CHECK(again["train/loss"][i][0] == resumed_lines[i]["step"]);
    CHECK(static_cast<float>(again["train/loss"][i][1].get<double>()) ==
          static_cast<float>(resumed_lines[i]["loss"].get<double>()));
  }

  const auto off = run_host("--config " + file.string() + " --set run.dir=" + (dir.path() / "off").string() +
                            " --set run.tensorboard=false --until-step 2");
  REQUIRE(off.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "off" / "tensorboard"));
}
