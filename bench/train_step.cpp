// Benchmark of one training step of a run file, exactly as cfamc-host runs it: the run's view groups
// augmented on the device, the objective's `prepare`, the [attack] (with its replays: free training's m),
// forward and backward through the backbone and objective plugins, and the [train] optimiser. Prints
// images/s, views/s and the split of the step time between the phases (each phase ends synchronised on the
// GPU, so the split is exact and the total slightly pessimistic). A "step" is one minibatch with all its
// replays.
//
//   build/bin/bench_train_step --config RUN.toml [--set key=value]... [--unset key]... [--steps 20] [--warmup 3]
//                              [--pure]
//
// --pure also times the step's floor: forward and backward alone (the objective's loss on one prepared batch,
// as many times as the step replays, in the run's precision; no augmentation, attack or optimiser), and prints
// the step's overhead over it.
// The images are synthetic uint8 images of the run's dataset shape, held on the device (no dataset is read),
// and the learning rate stays at [train] lr (a schedule changes no cost). The [attack] runs from the first
// step whatever its from_epoch: `--unset attack` times clean training. An objective with a `pseudo_labels`
// option (AdvCL) gets random labels for the synthetic images, one set for each K of its `k` option.
#include <ATen/CPUGeneratorImpl.h>
#include <cfamc/transfer.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include <unistd.h>

#include <CLI/CLI.hpp>

#include "augment/views.hpp"
#include "data/dataset_names.hpp"
#include "files.hpp"
#include "run/assembly.hpp"
#include "run/resolved_run.hpp"
#include "train/train_step.hpp"

using namespace cfamc::host;
namespace fs = std::filesystem;

namespace {

struct Settings {
  std::string config;
  std::vector<std::string> overrides, removals;
  int64_t steps = 20, warmup = 3;
  bool pure = false;
};

void synchronise(const std::string& device) {
  if (c10::Device(device).is_cuda()) torch::cuda::synchronize();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A folder of this process's own for what the bench writes, removed however the bench ends.
struct ScratchFolder {
  fs::path path = fs::temp_directory_path() / ("cfamc-bench-" + std::to_string(::getpid()));
  ScratchFolder() { fs::create_directories(path); }
  ~ScratchFolder() { remove_tree(path); }
};

int64_t dataset_size(const RunConfig& config) { return std::max<int64_t>(config.train.batch_size * 4, 1000); }

// Random pseudo-labels for the synthetic images, in the kmeans evaluator's artifact format, when the objective
// reads such a file; the run file then points at it. Returns the --set that does so, or "" when not needed.
std::string synthetic_pseudo_labels(const RunConfig& config, const fs::path& file) {
  const toml::table& options = config.find(Role::objective)->options;
  if (!options.contains("pseudo_labels") || !options["k"].as_array()) return "";
  const int64_t n = dataset_size(config);
  c10::Dict<std::string, at::Tensor> labels;
  at::Generator generator = at::detail::createCPUGenerator(0);
  options["k"].as_array()->for_each([&](const toml::node& k) {
    const int64_t clusters = k.value<int64_t>().value_or(2);
    labels.insert("k" + std::to_string(clusters), torch::randint(clusters, {n}, generator, torch::kLong));
  });
  labels.insert("num_samples", torch::tensor(n, torch::kLong));
  const std::vector<char> bytes = torch::pickle_save(labels);
  write_file_atomically(file, std::string(bytes.begin(), bytes.end()));
  return "objective.pseudo_labels=\"" + file.string() + "\"";
}

// The run file resolved, and resolved again pointing at synthetic pseudo-labels when its objective needs them.
ResolvedRun resolve(Settings& s, const fs::path& scratch) {
  ResolvedRun run = resolve_run(s.config, s.overrides, s.removals);
  const std::string pseudo_labels = synthetic_pseudo_labels(run.config, scratch / "pseudo_labels.pt");
  if (pseudo_labels.empty()) return run;
  s.overrides.push_back(pseudo_labels);
  return resolve_run(s.config, s.overrides, s.removals);
}

// What one step works on, made as the run makes it.
struct Bench {
  ResolvedRun run;
  Compute compute;
  Assembly assembly;
  std::vector<const ViewRecipe*> groups;
  at::Tensor images;  // uint8 [N, C, H, W] on the device
};

Bench assemble_bench(ResolvedRun run) {
  const RunConfig& config = run.config;
  if (!config.attack_schedule.empty()) {  // which of its attacks would be timed is the user's choice
    throw std::runtime_error(config.file + ": [[attack_schedule]] changes the attack between epochs; time one with "
                             "--unset attack_schedule and --set attack.plugin=... (or --unset attack: clean)");
  }
  const Compute compute = resolve_compute(config);
  configure_device(compute);
  const std::string& device = compute.device;
  Assembly assembly = assemble(config, run.registry, device);
  std::vector<const ViewRecipe*> groups = view_groups_of(config, *assembly.objective);
  ImageShape shape = image_shape(config.data.dataset);
  if (config.data.channels == "rgb") shape.channels = 3;
  const at::Tensor images = torch::randint(0, 256, {dataset_size(config), shape.channels, shape.height, shape.width},
                                           torch::TensorOptions().dtype(torch::kUInt8).device(device));
  return Bench{std::move(run), compute, std::move(assembly), std::move(groups), images};
}

// The objective's inputs for the minibatch of images [first, first + batch), made as the run makes them.
TensorMap prepared_batch(Bench& b, int64_t first, at::Generator& augment) {
  const int64_t batch = b.run.config.train.batch_size;
  const at::Tensor indices = cfamc::on_device_of(b.images, torch::arange(first, first + batch, torch::kLong));
  const at::Tensor images = b.images.slice(0, first, first + batch);
  TensorMap views;
  for (const ViewRecipe* recipe : b.groups) views.insert(recipe->name, make_views(*recipe, images, augment));
  return b.assembly.objective->prepare(views, indices);
}

double total_seconds(std::map<std::string, double> time) {
  return time["augmentation"] + time["attack"] + time["forward_backward"] + time["optimizer"];
}

// Seconds per phase over the timed steps.
std::map<std::string, double> time_steps(const Settings& s, Bench& b) {
  const RunConfig& config = b.run.config;
  const int64_t batch = config.train.batch_size;
  Optimizer optimizer(config.train.optimizer, b.assembly.trainable());
  TrainStep step(*b.assembly.backbone, *b.assembly.objective, optimizer, config.training_attack(), b.compute.precision,
                 c10::Device(b.compute.device).type(), [lr = config.train.lr](int64_t) { return lr; });
  at::Generator augment = at::detail::createCPUGenerator(0);
  b.assembly.backbone->set_training(true);
  b.assembly.objective->set_training(true);
  std::map<std::string, double> time;
  bool timed = false;
  auto mark = std::chrono::steady_clock::now();
  const auto phase_done = [&](const char* phase) {
    synchronise(b.compute.device);
    if (timed) time[phase] += seconds_since(mark);
    mark = std::chrono::steady_clock::now();
  };
  step.set_phase_observer([&](StepPhase phase) {
    phase_done(phase == StepPhase::attack ? "attack" : phase == StepPhase::forward_backward ? "forward_backward" : "optimizer");
  });
  for (int64_t i = 0; i < s.warmup + s.steps; ++i) {
    timed = i >= s.warmup;
    synchronise(b.compute.device);
    mark = std::chrono::steady_clock::now();
    const TensorMap inputs = prepared_batch(b, (i * batch) % (b.images.size(0) - batch + 1), augment);
    phase_done("augmentation");
    step.run(inputs, b.assembly.attack.get());
  }
  if (step.diverged()) throw std::runtime_error(config.file + ": the loss became NaN or infinite");
  return time;
}

// Seconds per step of forward and backward alone, on one batch prepared as the step prepares it.
double time_forward_backward(const Settings& s, Bench& b) {
  at::Generator augment = at::detail::createCPUGenerator(0);
  const TensorMap inputs = prepared_batch(b, 0, augment);
  const int32_t replays = b.assembly.attack ? b.assembly.attack->replays() : 1;
  const c10::DeviceType device = c10::Device(b.compute.device).type();
  double seconds = 0;
  for (int64_t i = 0; i < s.warmup + s.steps; ++i) {
    synchronise(b.compute.device);
    const auto start = std::chrono::steady_clock::now();
    for (int32_t r = 0; r < replays; ++r) {
      at::Tensor loss;
      {
        const AutocastScope autocast(b.compute.precision, device);
        loss = b.assembly.objective->loss(*b.assembly.backbone, inputs, TensorMap(), CFAMC_PHASE_TRAIN).loss;
      }
      loss.backward();
    }
    synchronise(b.compute.device);
    if (i >= s.warmup) seconds += seconds_since(start);
  }
  return seconds / static_cast<double>(s.steps);
}

void report(const Settings& s, const Bench& b, std::map<std::string, double> time) {
  const RunConfig& config = b.run.config;
  const double total = total_seconds(time);
  int64_t views = 0;
  std::string groups;
  for (const ViewRecipe* recipe : b.groups) {
    views += recipe->count;
    groups += (groups.empty() ? "" : " + ") + std::to_string(recipe->count) + " x " + std::to_string(recipe->size) +
              "px (" + recipe->name + ")";
  }
  const Attack* attack = b.assembly.attack.get();
  const std::string attacked = attack ? attack->info().name + " (" + std::to_string(attack->replays()) + " replay(s))"
                                      : std::string("none");
  std::printf("%s on %s (%s): %s + %s, attack %s, batch %lld images x %s, %lld timed steps\n", config.file.c_str(),
              b.compute.device.c_str(), name_of(b.compute.precision), b.assembly.backbone->info().name.c_str(), b.assembly.objective->info().name.c_str(),
              attacked.c_str(), static_cast<long long>(config.train.batch_size), groups.c_str(),
              static_cast<long long>(s.steps));
  const double images = static_cast<double>(s.steps * config.train.batch_size);
  std::printf("step %.4f s  |  %.1f images/s  %.1f views/s\n", total / s.steps, images / total, images * views / total);
  for (const char* phase : {"augmentation", "attack", "forward_backward", "optimizer"}) {
    std::printf("  %-17s %.4f s  %5.1f%%\n", phase, time[phase] / s.steps, 100.0 * time[phase] / total);
  }
}

void report_overhead(const std::map<std::string, double>& time, double pure, int64_t steps) {
  const double step = total_seconds(time) / static_cast<double>(steps);
  std::printf("forward+backward alone %.4f s  |  step overhead %.3fx\n", pure, step / pure);
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{"one cfamc training step of a run file: augmentation, attack, forward+backward, optimiser"};
  app.add_option("-c,--config", s.config, "the run file (TOML)")->required();
  app.add_option("--set", s.overrides, "override a run-file key, as cfamc-host --set (repeatable)");
  app.add_option("--unset", s.removals, "remove a run-file key or table, as cfamc-host --unset (repeatable)");
  app.add_option("--steps", s.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", s.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_flag("--pure", s.pure, "also time forward+backward alone and print the step's overhead over it");
  CLI11_PARSE(app, argc, argv);
  try {
    const ScratchFolder scratch;
    Bench bench = assemble_bench(resolve(s, scratch.path));
    const std::map<std::string, double> time = time_steps(s, bench);
    report(s, bench, time);
    if (s.pure) report_overhead(time, time_forward_backward(s, bench), s.steps);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
