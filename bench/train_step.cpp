// Benchmark of one training step as cfamc-host runs it: on-device multi-crop augmentation, the attack
// (none, PGD against the objective's loss, or free training's replays), forward and backward through a
// backbone plugin and an objective plugin, and the optimiser step. Prints crops/s and the split of the
// step time between the phases (each phase is synchronised on the GPU, so the split is exact and the
// total slightly pessimistic). A "step" is one minibatch: with free training, its m replays.
//
//   build/bin/bench_train_step [--device cuda] [--backbone resnet18] [--objective emp_ssl] [--batch 100]
//                              [--crops 16] [--size 32] [--steps 20] [--warmup 3]
//                              [--attack none|pgd|free] [--attack-steps 5] [--replays 3]
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <map>

#include <CLI/CLI.hpp>

#include "augment/views.hpp"
#include "config/options.hpp"
#include "plugins/components.hpp"
#include "train/train_step.hpp"

using namespace cfamc::host;

namespace {

struct Settings {
  std::string device = "cpu", backbone = "resnet18", objective = "emp_ssl", plugins;
  int64_t batch = 100, crops = 16, size = 32, steps = 20, warmup = 3;
  std::string attack = "none";
  int64_t attack_steps = 5, replays = 3;
};

void synchronise(const std::string& device) {
  if (c10::Device(device).is_cuda()) torch::cuda::synchronize();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <class K>
std::unique_ptr<K> make(const Registry& registry, cfamc_kind kind, const std::string& name, const std::string& options,
                        const std::string& device, int64_t feature_dim) {
  const ComponentInfo& info = registry.find(kind, name);
  return instantiate<K>(registry, info,
                        ComponentSetup{name, resolve_options(toml::parse(options), info.options, name, "bench"), 0,
                                       device, feature_dim});
}

// The components of the benchmarked step, made as a run file would make them.
struct Bench {
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> objective;
  std::unique_ptr<Attack> attack;
  std::unique_ptr<Optimizer> optimizer;
};

Bench assemble(const Settings& s) {
  const Registry registry = Registry::discover(
      s.plugins.empty() ? plugin_search_path({}) : std::vector<std::filesystem::path>{s.plugins}, host_api());
  Bench b;
  b.backbone = make<Backbone>(registry, CFAMC_KIND_BACKBONE, s.backbone, "", s.device, 0);
  const std::string objective_options =
      s.objective == "emp_ssl" ? "num_crops = " + std::to_string(s.crops) : "num_views = " + std::to_string(s.crops);
  b.objective =
      make<Objective>(registry, CFAMC_KIND_OBJECTIVE, s.objective, objective_options, s.device, b.backbone->feature_dim());
  if (s.attack == "pgd") {
    b.attack = make<Attack>(registry, CFAMC_KIND_ATTACK, "pgd",
                            "steps = " + std::to_string(s.attack_steps) + "\nstep_size = 0.01\nrandom_start = false",
                            s.device, 0);
  } else if (s.attack == "free") {
    b.attack = make<Attack>(registry, CFAMC_KIND_ATTACK, "free", "replays = " + std::to_string(s.replays), s.device, 0);
  }
  TensorMap parameters;
  for (const Component* c : {static_cast<const Component*>(b.backbone.get()), static_cast<const Component*>(b.objective.get())})
    for (const auto& item : c->tensors(CFAMC_ROLE_PARAMETER)) parameters.insert(item.key(), item.value());
  b.optimizer = std::make_unique<Optimizer>(train_defaults().optimizer, parameters);  // EMP-SSL's: LARS around Nesterov SGD
  return b;
}

ViewRecipe crop_recipe(const Settings& s, const Objective& objective) {
  ViewRecipe recipe = view_recipe_defaults(objective.view_groups().front());  // EMP-SSL's crop recipe
  recipe.count = s.crops;
  recipe.size = s.size;
  recipe.blur = 0.1;
  recipe.solarize = 0.1;
  return recipe;
}

// Seconds per phase over the timed steps. Each phase ends synchronised, so the split is exact and the total
// slightly pessimistic.
std::map<std::string, double> time_steps(const Settings& s, Bench& b) {
  // The run's training step itself, with the [attack] host keys at their defaults.
  TrainStep step(*b.backbone, *b.objective, *b.optimizer, training_attack_defaults(), [](int64_t) { return 0.3; });
  const ViewRecipe recipe = crop_recipe(s, *b.objective);
  at::Generator generator = at::detail::createCPUGenerator(0);
  const at::Tensor dataset = torch::randint(0, 256, {std::max<int64_t>(s.batch * 4, 1000), 3, 32, 32},
                                            torch::TensorOptions().dtype(torch::kUInt8).device(s.device));
  b.backbone->set_training(true);
  b.objective->set_training(true);
  std::map<std::string, double> time;
  bool timed = false;
  auto mark = std::chrono::steady_clock::now();
  const auto phase_done = [&](const char* phase) {
    synchronise(s.device);
    if (timed) time[phase] += seconds_since(mark);
    mark = std::chrono::steady_clock::now();
  };
  step.set_phase_observer([&](StepPhase phase) {
    phase_done(phase == StepPhase::attack ? "attack" : phase == StepPhase::forward_backward ? "forward_backward" : "optimizer");
  });
  for (int64_t i = 0; i < s.warmup + s.steps; ++i) {
    timed = i >= s.warmup;
    synchronise(s.device);
    mark = std::chrono::steady_clock::now();
    const at::Tensor images = dataset.slice(0, (i * s.batch) % (dataset.size(0) - s.batch)).slice(0, 0, s.batch);
    TensorMap views;
    views.insert(recipe.name, make_views(recipe, images, generator));
    const TensorMap inputs = b.objective->prepare(views, torch::arange(s.batch, torch::TensorOptions().device(s.device)));
    phase_done("augmentation");
    step.run(inputs, b.attack.get());
  }
  if (step.diverged()) throw std::runtime_error("the loss became NaN or infinite");
  return time;
}

void report(const Settings& s, int32_t replays, std::map<std::string, double> time) {
  const double total = time["augmentation"] + time["attack"] + time["forward_backward"] + time["optimizer"];
  const std::string attack = s.attack == "pgd"    ? s.attack + "-" + std::to_string(s.attack_steps)
                             : s.attack == "free" ? s.attack + " m=" + std::to_string(replays)
                                                  : s.attack;
  std::printf("device %s, %s + %s, attack %s, batch %lld x %lld crops of %lldx%lld, %lld timed steps\n",
              s.device.c_str(), s.backbone.c_str(), s.objective.c_str(), attack.c_str(),
              static_cast<long long>(s.batch), static_cast<long long>(s.crops), static_cast<long long>(s.size),
              static_cast<long long>(s.size), static_cast<long long>(s.steps));
  std::printf("step %.4f s  |  %.1f crops/s  %.1f images/s\n", total / s.steps,
              static_cast<double>(s.steps * s.batch * s.crops) / total, static_cast<double>(s.steps * s.batch) / total);
  for (const char* phase : {"augmentation", "attack", "forward_backward", "optimizer"}) {
    std::printf("  %-17s %.4f s  %5.1f%%\n", phase, time[phase] / s.steps, 100.0 * time[phase] / total);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{"one cfamc training step: augmentation, forward+backward, optimiser"};
  app.add_option("--device", s.device, "cpu, cuda, cuda:N");
  app.add_option("--backbone", s.backbone, "backbone plugin");
  app.add_option("--objective", s.objective, "objective plugin (emp_ssl or simclr)");
  app.add_option("--batch", s.batch, "images per step");
  app.add_option("--crops", s.crops, "views per image");
  app.add_option("--size", s.size, "view side length");
  app.add_option("--steps", s.steps, "timed steps");
  app.add_option("--warmup", s.warmup, "untimed steps first");
  app.add_option("--plugins", s.plugins, "plugin directory (default: next to this program)");
  app.add_option("--attack", s.attack, "none, pgd (robust EMP-SSL: zero start, step 0.01) or free")
      ->check(CLI::IsMember({"none", "pgd", "free"}));
  app.add_option("--attack-steps", s.attack_steps, "PGD steps");
  app.add_option("--replays", s.replays, "free training's replays per minibatch (m)");
  CLI11_PARSE(app, argc, argv);
  try {
    Bench bench = assemble(s);
    report(s, bench.attack ? bench.attack->replays() : 1, time_steps(s, bench));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
