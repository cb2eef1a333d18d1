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
#include "train/objective_oracle.hpp"
#include "train/optimizer.hpp"

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
    const Registry registry = Registry::discover(
        s.plugins.empty() ? plugin_search_path({}) : std::vector<std::filesystem::path>{s.plugins}, host_api());
    auto backbone = make<Backbone>(registry, CFAMC_KIND_BACKBONE, s.backbone, "", s.device, 0);
    const std::string objective_options =
        s.objective == "emp_ssl" ? "num_crops = " + std::to_string(s.crops) : "num_views = " + std::to_string(s.crops);
    auto objective =
        make<Objective>(registry, CFAMC_KIND_OBJECTIVE, s.objective, objective_options, s.device, backbone->feature_dim());
    NamedTensors parameters;
    for (const Component* c : {static_cast<const Component*>(backbone.get()), static_cast<const Component*>(objective.get())})
      for (const auto& t : c->named_tensors())
        if (t.role == CFAMC_ROLE_PARAMETER) parameters.emplace_back(t.name, t.tensor);
    std::unique_ptr<Attack> attack;
    if (s.attack == "pgd") {
      attack = make<Attack>(registry, CFAMC_KIND_ATTACK, "pgd",
                            "steps = " + std::to_string(s.attack_steps) + "\nstep_size = 0.01\nrandom_start = false",
                            s.device, 0);
    } else if (s.attack == "free") {
      attack = make<Attack>(registry, CFAMC_KIND_ATTACK, "free", "replays = " + std::to_string(s.replays), s.device, 0);
    }
    const int32_t replays = attack ? attack->replays() : 1;
    const std::vector<std::string> attacked = objective->attacked_inputs();
    OptimizerConfig lars;
    lars.kind = "lars";
    lars.nesterov = true;
    lars.weight_decay = 1e-4;
    Optimizer optimizer(lars, parameters);

    ViewRecipe recipe;  // EMP-SSL's crop recipe
    recipe.name = objective->view_groups().front();
    recipe.count = s.crops;
    recipe.size = s.size;
    recipe.blur = 0.1;
    recipe.solarize = 0.1;
    at::Generator generator = at::detail::createCPUGenerator(0);
    const at::Tensor dataset = torch::randint(0, 256, {std::max<int64_t>(s.batch * 4, 1000), 3, 32, 32},
                                              torch::TensorOptions().dtype(torch::kUInt8).device(s.device));
    backbone->set_training(true);
    objective->set_training(true);

    std::map<std::string, double> time;
    for (int64_t step = 0; step < s.warmup + s.steps; ++step) {
      const bool timed = step >= s.warmup;
      synchronise(s.device);
      auto start = std::chrono::steady_clock::now();
      const at::Tensor images = dataset.slice(0, (step * s.batch) % (dataset.size(0) - s.batch)).slice(0, 0, s.batch);
      TensorMap views;
      views.insert(recipe.name, make_views(recipe, images, generator));
      const TensorMap inputs = objective->prepare(views, torch::arange(s.batch, torch::TensorOptions().device(s.device)));
      synchronise(s.device);
      if (timed) time["augmentation"] += seconds_since(start);

      for (int32_t replay = 0; replay < replays; ++replay) {
        start = std::chrono::steady_clock::now();
        optimizer.zero_grad();
        TensorMap adversarial;
        if (attack) {
          TensorMap targets;
          for (const auto& name : attacked) targets.insert(name, inputs[name]);
          ObjectiveOracle oracle(*objective, *backbone, inputs);
          const cfamc_oracle c_oracle = oracle.get();
          adversarial = attack->perturb(c_oracle, targets);
          if (attack->observes())
            for (auto& item : adversarial) item.value() = item.value().detach().requires_grad_(true);
        }
        synchronise(s.device);
        if (timed) time["attack"] += seconds_since(start);

        start = std::chrono::steady_clock::now();
        const LossResult result = objective->loss(*backbone, inputs, adversarial, CFAMC_PHASE_TRAIN);
        result.loss.backward();
        if (attack && attack->observes()) {
          TensorMap gradients;
          for (const auto& item : adversarial) gradients.insert(item.key(), item.value().grad());
          attack->observe(gradients);
        }
        synchronise(s.device);
        if (timed) time["forward_backward"] += seconds_since(start);

        start = std::chrono::steady_clock::now();
        optimizer.step(0.3);
        synchronise(s.device);
        if (timed) time["optimizer"] += seconds_since(start);
      }
    }
    const double total = time["augmentation"] + time["attack"] + time["forward_backward"] + time["optimizer"];
    std::printf("device %s, %s + %s, attack %s%s, batch %lld x %lld crops of %lldx%lld, %lld timed steps\n",
                s.device.c_str(), s.backbone.c_str(), s.objective.c_str(), s.attack.c_str(),
                s.attack == "pgd"    ? ("-" + std::to_string(s.attack_steps)).c_str()
                : s.attack == "free" ? (" m=" + std::to_string(replays)).c_str()
                                     : "",
                static_cast<long long>(s.batch), static_cast<long long>(s.crops), static_cast<long long>(s.size),
                static_cast<long long>(s.size), static_cast<long long>(s.steps));
    std::printf("step %.4f s  |  %.1f crops/s  %.1f images/s\n", total / s.steps,
                static_cast<double>(s.steps * s.batch * s.crops) / total, static_cast<double>(s.steps * s.batch) / total);
    for (const char* phase : {"augmentation", "attack", "forward_backward", "optimizer"}) {
      std::printf("  %-17s %.4f s  %5.1f%%\n", phase, time[phase] / s.steps, 100.0 * time[phase] / total);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
