// Data-parallel runs (issue 13): two processes on this machine through Gloo compute what one process
// computes on the whole batch; a job whose process dies or hangs stops within its timeout; a killed job
// resumes exactly; launchers' environments are checked.
#include "torch_catch.hpp"

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "job_launcher.hpp"
#include "support.hpp"
#include "tiny_run.hpp"
#include "train/checkpoint.hpp"
#include "train/checkpoint_files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using cfamc::host::TensorMap;
using cfamc::test::run_job;

namespace {

// The tiny run in float32 (bf16 kernels pick other blockings for other batch sizes), 8 steps.
const std::string kSettings = " --set run.precision=fp32 --set train.epochs=1 --set run.tensorboard=false";
// Plain SGD for the comparisons of weights: LARS's first updates on this tiny network are so large that the
// rounding of two summation orders (1e-7) grows to 0.5% of the weights within 8 steps, either way.
const std::string kGentle = " --set train.optimizer=sgd --set train.lr=0.05";

const char* const kSimclr = R"(
[objective]
plugin = "simclr"
group = "crops"
num_views = 2
hidden_dim = 32
projection_dim = 16
)";

const char* const kFree = "\n[attack]\nplugin = \"free\"\nreplays = 2\n";

// kTinyRun with its objective replaced by `objective` (when given) and `extra` appended.
std::string run_file(const std::string& objective, const std::string& extra) {
  std::string text = cfamc::test::kTinyRun;
  if (!objective.empty()) text = text.substr(0, text.find("[objective]")) + objective;
  return text + extra;
}

void replace(std::string& text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
}

// A CIFAR-10-format dataset of uniform noise in `dir` (400 training, 100 test images), and the run file
// reading it. Fashion-MNIST's black backgrounds give max-pooling exact ties that two batch sizes' kernels
// break differently in the last bit; free training's sign() then turns that rounding into whole steps.
std::string noise_run_file(const fs::path& dir, const std::string& objective, const std::string& extra) {
  std::mt19937 random(5);
  const auto write_batch = [&](const std::string& name, int images) {
    std::string bytes;
    for (int i = 0; i < images; ++i) {
      bytes += static_cast<char>(random() % 10);
      for (int p = 0; p < 3072; ++p) bytes += static_cast<char>(random() % 256);
    }
    std::ofstream(dir / name, std::ios::binary) << bytes;
  };
  for (int b = 1; b <= 5; ++b) write_batch("data_batch_" + std::to_string(b) + ".bin", 80);
  write_batch("test_batch.bin", 100);
  std::string text = run_file(objective, extra);
  replace(text, "dataset = \"fashion_mnist\"", "dataset = \"cifar10\"\nroot = \"" + dir.string() + "\"");
  replace(text, "in_channels = 1", "in_channels = 3");
  return text;
}

// The checkpoint of `step` (0: the last) of the run in `run_dir`.
TensorMap checkpoint(const fs::path& run_dir, int64_t step) {
  const auto all = cfamc::host::checkpoints_in(run_dir / "checkpoints");
  REQUIRE_FALSE(all.empty());
  for (const auto& [at, file] : all)
    if (at == step) return cfamc::host::load_checkpoint(file);
  REQUIRE(step == 0);
  return cfamc::host::load_checkpoint(all.back().second);
}

// How far apart two runs' weights and buffers are at the checkpoint of `step` (0: the last): the L2 norm
// of the differences of every backbone and objective tensor over the L2 norm of the second run's (a tensor
// of small values, such as a young BatchNorm bias, would make a per-tensor ratio meaningless). Every name
// of one must be in the other.
double weight_difference(const fs::path& a, const fs::path& b, int64_t step = 0) {
  const TensorMap first = checkpoint(a, step), second = checkpoint(b, step);
  double difference = 0, norm = 0, largest = 0;
  int compared = 0;
  std::string worst;
  for (const auto& item : first) {
    const std::string& name = item.key();
    if (name.rfind("backbone/", 0) != 0 && name.rfind("objective/", 0) != 0) continue;
    INFO(name);
    REQUIRE(second.contains(name));
    const at::Tensor x = item.value().to(at::kDouble), y = second[name].to(at::kDouble);
    const double squared = (x - y).square().sum().item<double>();
    difference += squared;
    norm += y.square().sum().item<double>();
    if (squared > largest) largest = squared, worst = name;
    ++compared;
  }
  CHECK(compared > 10);
  UNSCOPED_INFO("relative difference " << std::sqrt(difference / norm) << ", most in " << worst);
  return std::sqrt(difference / norm);
}

std::string host_command(const fs::path& file, const fs::path& run_dir, const std::string& more = "") {
  return std::string(CFAMC_HOST_EXE) + " --config " + file.string() + " --set run.dir=" + run_dir.string() + kSettings +
         " " + more;
}

void require_all_ok(const cfamc::test::JobOutcome& job) {
  for (size_t r = 0; r < job.exit_codes.size(); ++r) {
    INFO("rank " << r << ":\n" << job.logs[r]);
    REQUIRE(job.exit_codes[r] == 0);
  }
}

// Waits until `dir` holds a checkpoint of at least `step`, or `limit_s` passed.
void wait_for_checkpoint(const fs::path& dir, int64_t step, double limit_s) {
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < limit_s) {
    if (fs::exists(dir)) {
      const auto all = cfamc::host::checkpoints_in(dir);
      if (!all.empty() && all.back().first >= step) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

TEST_CASE("the all-gather's gradient, SyncBatchNorm and averaged gradients of 2 processes equal 1 process's",
          "[data_parallel]") {
  cfamc::test::TempDir dir;
  const std::string worker = CFAMC_DATA_PARALLEL_WORKER;
  const auto single = cfamc::test::run_shell("env -u WORLD_SIZE " + worker + " " + (dir.path() / "one.pt").string() + " overlap");
  INFO(single.output);
  REQUIRE(single.exit_code == 0);
  const TensorMap one = cfamc::host::load_checkpoint(dir.path() / "one.pt");
  for (const std::string mode : {"overlap", "finished"}) {
    INFO(mode);
    const fs::path out = dir.path() / (mode + ".pt");
    require_all_ok(run_job(dir.path(), 2, worker + " " + out.string() + " " + mode, 120));
    const TensorMap two = cfamc::host::load_checkpoint(out);
    REQUIRE(two.size() == one.size());
    for (const auto& item : one) {
      INFO(item.key() << "\n1 process: " << item.value() << "\n2 processes: " << two[item.key()]);
      CHECK(item.value().abs().max().item<double>() > 0);
      CHECK(torch::allclose(two[item.key()], item.value(), 1e-5, 1e-6));
    }
  }
}

// Clean runs are compared after all 8 steps. Free training's sign() of the input gradient flips wherever
// that gradient is zero within rounding, which the two runs' summation orders round differently; each flip
// moves a pixel by 2 x step_size, and the runs drift apart (measured: 0.5-4% of the weights by step 8). So
// free runs are compared at the first checkpoint (2 minibatches, 4 averaged updates, the perturbation
// carried across a minibatch), with a small epsilon that bounds what a flip changes.
TEST_CASE("2 processes train to the weights of 1 process on the same global batch, EMP-SSL and SimCLR, clean and free",
          "[data_parallel]") {
  for (const bool simclr : {false, true}) {
    for (const bool free : {false, true}) {
      INFO((simclr ? "simclr" : "emp_ssl") << (free ? " free" : " clean"));
      cfamc::test::TempDir dir;
      const fs::path file = dir.write(
          "run.toml", noise_run_file(dir.path(), simclr ? kSimclr : "", free ? std::string(kFree) + "epsilon = 0.002\n" : ""));
      const std::string sync = kGentle + " --set backbone.sync_bn=true";
      const auto single =
          cfamc::test::run_host("--config " + file.string() + " --set run.dir=" + (dir.path() / "one").string() + kSettings + kGentle);
      INFO(single.output);
      REQUIRE(single.exit_code == 0);
      const auto job = run_job(dir.path(), 2, host_command(file, dir.path() / "two", sync), 300);
      require_all_ok(job);
      CHECK_THAT(job.logs[1], Contains("[rank 1/2]"));
      const double difference = weight_difference(dir.path() / "one", dir.path() / "two", free ? 2 : 0);
      CHECK(difference < 1e-3);
      if (simclr || free) continue;
      // Without SyncBatchNorm each process normalises its own half: the check above can fail.
      require_all_ok(run_job(dir.path(), 2, host_command(file, dir.path() / "local_bn", kGentle), 300));
      CHECK(weight_difference(dir.path() / "one", dir.path() / "local_bn") > 100 * std::max(difference, 1e-6));
    }
  }
}

// Without sync_bn: each process's BatchNorm statistics are its own between checkpoints, and rank 0's at them.
TEST_CASE("a killed process stops the job with exit code 6, and --resume continues exactly", "[data_parallel]") {
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", kFree));
  const std::string settings = " --set run.timeout_s=20 --set train.epochs=10";
  require_all_ok(run_job(dir.path(), 2, host_command(file, dir.path() / "whole", settings), 300));
  const fs::path run_dir = dir.path() / "killed";
  double killed_at = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto job = run_job(dir.path(), 2, host_command(file, run_dir, settings), 300, [&](const std::vector<pid_t>& pids) {
    wait_for_checkpoint(run_dir / "checkpoints", 2, 120);
    ::kill(pids[1], SIGKILL);
    killed_at = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  INFO(job.logs[0]);
  CHECK(job.exit_codes[1] == 128 + SIGKILL);
  CHECK(job.exit_codes[0] == 6);
  CHECK_THAT(job.logs[0], Contains("another process of the job died"));
  CHECK(job.ended_at[0] - killed_at < 20);
  require_all_ok(run_job(dir.path(), 2, host_command(file, run_dir, settings + " --resume"), 300));
  CHECK(weight_difference(dir.path() / "whole", run_dir) == 0);
}

TEST_CASE("a hung process stops the job within run.timeout_s", "[data_parallel]") {
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", ""));
  const fs::path run_dir = dir.path() / "hung";
  double stopped_at = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto job = run_job(dir.path(), 2, host_command(file, run_dir, "--set run.timeout_s=3 --set train.epochs=50"), 120,
                           [&](const std::vector<pid_t>& pids) {
                             wait_for_checkpoint(run_dir / "checkpoints", 2, 60);
                             ::kill(pids[1], SIGSTOP);
                             stopped_at = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                             // Rank 0 must give up on its own; then the stopped one is ended.
                             std::thread([pid = pids[1]] {
                               std::this_thread::sleep_for(std::chrono::seconds(9));
                               ::kill(pid, SIGKILL);
                               ::kill(pid, SIGCONT);
                             }).detach();
                           });
  INFO(job.logs[0]);
  CHECK(job.exit_codes[0] == 6);
  CHECK(job.ended_at[0] - stopped_at < 8);  // on its own: the stopped rank is killed 9 s after it stopped
}

TEST_CASE("a launch environment that is incomplete or a batch that cannot be shared is a clear error", "[data_parallel]") {
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", ""));
  const std::string host = std::string(CFAMC_HOST_EXE) + " --config " + file.string() + " --set run.dir=" + dir.path().string();
  const auto no_address = cfamc::test::run_shell("env -u MASTER_ADDR WORLD_SIZE=2 RANK=0 " + host);
  CHECK(no_address.exit_code == 2);
  CHECK_THAT(no_address.output, Contains("MASTER_ADDR"));
  const auto bad_rank = cfamc::test::run_shell("WORLD_SIZE=2 RANK=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " + host);
  CHECK(bad_rank.exit_code == 2);
  CHECK_THAT(bad_rank.output, Contains("RANK='2'"));
  const int port = cfamc::test::free_port();
  const auto uneven = run_job(dir.path(), 2, host + " --set train.batch_size=49", 120);
  CHECK(uneven.exit_codes[0] == 2);
  CHECK_THAT(uneven.logs[0], Contains("cannot be shared equally by 2 processes"));
  // Rank 1 alone: nobody hosts the store, so it gives up after run.timeout_s.
  const auto alone = cfamc::test::run_shell("WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                                            " timeout 60 " + host + " --set run.timeout_s=2");
  CHECK(alone.exit_code == 6);
  CHECK_THAT(alone.output, Contains("did not meet"));
}

TEST_CASE("torchrun launches a data-parallel run", "[data_parallel]") {
  const std::string python = CFAMC_TEST_PYTHON;
  REQUIRE_FALSE(python.empty());  // setup.sh installs the pinned torch, and with it torchrun
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", ""));
  const auto out = cfamc::test::run_shell(
      "env -u WORLD_SIZE -u CFAMC_PLUGIN_PATH OMP_NUM_THREADS=1 timeout 300 " + python +
      " -m torch.distributed.run --nproc-per-node 2 --master-port " + std::to_string(cfamc::test::free_port()) +
      " --no-python " + host_command(file, dir.path() / "run"));
  INFO(out.output);
  REQUIRE(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("[rank 1/2]"));
  CHECK(cfamc::test::read_json(dir.path() / "run" / "summary.json")["run"]["processes"] == 2);
}

TEST_CASE("evaluators of 2 processes share the images and report what 1 process reports", "[data_parallel]") {
  // The controls evaluate the seeded network before any training step: the same encoder in both runs. The
  // attack starts at the image (no random draw), so nothing but the sharing of the work differs.
  const std::string evaluators = R"(
[attacks.pgd]
plugin = "pgd"
steps = 3
random_start = false

[[evaluate]]
plugin = "linear_probe"
control = ["untrained", "pixels"]
epochs = 3
attacks = ["pgd"]

[[evaluate]]
plugin = "knn"
control = true
k = 5
)";
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", evaluators));
  const std::string until = " --until-step 1 --set data.test_subset=99";  // 99: shares of 50 and 49 test images
  const auto single = cfamc::test::run_host("--config " + file.string() + " --set run.dir=" + (dir.path() / "one").string() +
                                            kSettings + until);
  INFO(single.output);
  REQUIRE(single.exit_code == 0);
  require_all_ok(run_job(dir.path(), 2, host_command(file, dir.path() / "two", until), 300));
  const auto one = cfamc::test::read_json(dir.path() / "one" / "eval_untrained.json");
  const auto two = cfamc::test::read_json(dir.path() / "two" / "eval_untrained.json");
  INFO(one.dump(1) << "\n" << two.dump(1));
  for (const std::string id : {"linear_probe_untrained", "linear_probe_pixels"}) {
    CHECK(two[id]["accuracy"] == one[id]["accuracy"]);
    CHECK(two[id]["robust_accuracy"]["pgd"] == one[id]["robust_accuracy"]["pgd"]);
    CHECK(two[id]["robust_subset"]["images"] == 99);
  }
  CHECK(two["knn_untrained"]["accuracy"] == one["knn_untrained"]["accuracy"]);
  CHECK(one["linear_probe_pixels"]["robust_accuracy"]["pgd"] < one["linear_probe_pixels"]["accuracy"]);  // the attack bites
}

TEST_CASE("a 2-process job's checkpoint resumes in 1 process, each process's attack state afresh", "[data_parallel]") {
  cfamc::test::TempDir dir;
  const fs::path file = dir.write("run.toml", run_file("", kFree));
  const fs::path run_dir = dir.path() / "run";
  require_all_ok(run_job(dir.path(), 2, host_command(file, run_dir, "--until-step 4"), 300));
  const TensorMap saved = checkpoint(run_dir, 4);
  CHECK(saved["trainer/world_size"].item<int64_t>() == 2);
  CHECK(saved.contains("ranks/1/attack/delta"));
  CHECK(saved["attack/delta"].size(0) == 2 * 25);  // rank 0's share of 25 images x 2 crops
  const auto alone = cfamc::test::run_host("--config " + file.string() + " --set run.dir=" + run_dir.string() + kSettings +
                                           " --resume");
  INFO(alone.output);
  REQUIRE(alone.exit_code == 0);
  CHECK_THAT(alone.output, Contains("written by a job of 2 processes") && Contains("starts afresh"));
  CHECK_FALSE(checkpoint(run_dir, 8).contains("ranks/1/attack/delta"));
}
