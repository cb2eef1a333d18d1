#include "train/trainer.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "augment/views.hpp"
#include "config/run_config.hpp"
#include "data/datasets.hpp"
#include "data/sampler.hpp"
#include "eval/eval_services.hpp"
#include "eval/robustness_curve.hpp"
#include "failure.hpp"
#include "log.hpp"
#include "plugins/registry.hpp"
#include "run/assembly.hpp"
#include "run/run_dir.hpp"
#include "train/checkpoint.hpp"
#include "train/objective_oracle.hpp"
#include "train/optimizer.hpp"
#include "train/progress.hpp"
#include "train/schedule.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace cfamc::host {
namespace {

struct Data {
  DatasetSplit train, test;
};

DatasetSplit prepare_split(ImageSet set, int64_t subset, const DataConfig& config, const std::string& device) {
  if (subset > 0 && subset < set.images.size(0)) {
    set.images = set.images.slice(0, 0, subset);
    set.labels = set.labels.slice(0, 0, subset);
  }
  if (config.channels == "rgb" && set.images.size(1) == 1) set.images = set.images.expand({-1, 3, -1, -1});
  return DatasetSplit{set.images.contiguous().to(device), set.labels.to(device)};
}

Data load_data(const DataConfig& config, const std::string& device) {
  const DatasetSpec spec{config.dataset, config.root};
  Data data;
  data.train = prepare_split(load_split(spec, config.train_split), config.train_subset, config, device);
  data.test = prepare_split(load_split(spec, "test"), config.test_subset, config, device);
  log(LogLevel::info, config.dataset + ": " + std::to_string(data.train.images.size(0)) + " training and " +
                          std::to_string(data.test.images.size(0)) + " test images of " +
                          c10::str(data.train.images.sizes().slice(1)) + " on " + device);
  return data;
}

NamedTensors trainable(const Assembly& a) {
  NamedTensors out;
  for (const auto& t : a.backbone->named_tensors())
    if (t.role == CFAMC_ROLE_PARAMETER) out.emplace_back("backbone/" + t.name, t.tensor);
  for (const auto& t : a.objective->named_tensors())
    if (t.role == CFAMC_ROLE_PARAMETER) out.emplace_back("objective/" + t.name, t.tensor);
  return out;
}

// Everything a resumed run needs to continue exactly as the uninterrupted one.
CheckpointTensors run_state(const Assembly& a, Optimizer& optimizer, const at::Tensor& step, at::Generator& augment) {
  CheckpointTensors out;
  const auto add = [&](const char* prefix, const Component* c) {
    if (c == nullptr) return;
    for (const auto& t : c->named_tensors()) out.emplace_back(std::string(prefix) + t.name, t.tensor);
  };
  add("backbone/", a.backbone.get());
  add("objective/", a.objective.get());
  add("attack/", a.attack.get());
  for (auto& [name, t] : optimizer.state()) out.emplace_back("optimizer/" + name, t);
  out.emplace_back("trainer/step", step);
  out.emplace_back("trainer/augment_rng", augment.get_state());
  return out;
}

// Copies a checkpoint into the live tensors. Attack state may be absent: resuming with another attack
// is allowed.
void set_encoder_training(const Assembly& a, bool training) {
  a.backbone->set_training(training);
  a.objective->set_training(training);
}

// Updates made so far: the optimiser counts them in its checkpointed state.
int64_t optimizer_updates(Optimizer& optimizer) {
  for (auto& [name, tensor] : optimizer.state())
    if (name == "steps") return tensor.item<int64_t>();
  return 0;
}

int64_t restore(const fs::path& file, const Assembly& a, Optimizer& optimizer, at::Generator& augment) {
  const auto saved = load_checkpoint(file);
  at::Tensor step = at::zeros({}, at::kLong);
  c10::NoGradGuard no_grad;
  for (auto& [name, tensor] : run_state(a, optimizer, step, augment)) {
    auto it = saved.find(name);
    if (it == saved.end()) {
      if (name.rfind("attack/", 0) == 0) {
        log(LogLevel::warn, "resume: " + file.string() + " has no '" + name + "' (another attack?); starting it fresh");
        continue;
      }
      fail(ExitCode::other, "resume: checkpoint " + file.string() + " lacks '" + name + "'; was it made by another run file?");
    }
    if (name == "trainer/augment_rng") {
      augment.set_state(it->second);
    } else if (name.rfind("attack/", 0) == 0) {
      tensor.set_data(it->second.to(tensor.device()));  // attack state takes its saved shape (free training)
    } else if (it->second.sizes() != tensor.sizes()) {
      fail(ExitCode::other, "resume: '" + name + "' has shape " + c10::str(it->second.sizes()) + " in " + file.string() +
                                " but " + c10::str(tensor.sizes()) + " in this run");
    } else {
      tensor.copy_(it->second);
    }
  }
  return step.item<int64_t>();
}

json evaluate_all(const Assembly& a, const Data& data, const RunConfig& config, const fs::path& run_dir,
                  bool untrained_controls) {
  json results = json::object();
  at::Generator views = at::detail::createCPUGenerator(component_seed(config.seed, "evaluation views"));
  const auto view_maker = [&](const std::string& group, const at::Tensor& images) {
    const ViewRecipe* recipe = config.view(group);
    if (recipe == nullptr) fail(ExitCode::usage, "an evaluator asked for view group '" + group + "', which [views] lacks");
    return make_views(*recipe, images, views);
  };
  for (const auto& [component, evaluator] : a.evaluators) {
    if (untrained_controls && !component->control) continue;
    const std::string id = component->id + (untrained_controls ? "_untrained" : "");
    EvalServices services(*a.backbone, a.objective.get(), {{"train", data.train}, {"test", data.test}},
                          a.attacks_for(*component), run_dir / "artifacts" / id, view_maker);
    const auto start = std::chrono::steady_clock::now();
    evaluator->evaluate(*services.get());
    json metrics = services.metrics();
    metrics["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<std::pair<std::string, double>> epsilons;
    for (const auto& attack_id : component->attacks) {
      if (const ComponentConfig* attack = config.evaluation_attack(attack_id); attack && attack->options.contains("epsilon"))
        epsilons.emplace_back(attack_id, attack->options["epsilon"].value_or(0.0));
    }
    if (const auto curve = robustness_curve(metrics, epsilons); !curve.empty()) {
      metrics["robustness_curve"] = to_json(curve);
      write_curve_svg(curve, id + ": accuracy under attack", run_dir / "artifacts" / id / "robustness_curve.svg");
    }
    log(LogLevel::info, "evaluation " + id + ": " + services.metrics().dump());
    results[id] = metrics;
  }
  return results;
}

void append_line(const fs::path& file, const json& line) {
  std::ofstream out(file, std::ios::app);
  out << line.dump() << "\n";
}

}  // namespace

void run_training(const RunConfig& config, const Registry& registry, const RunRequest& request) {
  const auto wall_start = std::chrono::steady_clock::now();
  const fs::path& run_dir = request.run_dir;
  const Data data = load_data(config.data, request.device);
  Assembly a = assemble(config, registry, request.device);

  const std::vector<const ViewRecipe*> groups = view_groups_of(config, *a.objective);
  int64_t views_per_image = 0;
  for (const ViewRecipe* recipe : groups) views_per_image += recipe->count;

  TrainConfig train = config.train;
  EpochSampler sampler(data.train.images.size(0), train.batch_size, component_seed(config.seed, "sampler"));
  const int64_t steps_per_epoch = sampler.steps_per_epoch();
  set_steps_per_epoch(train, steps_per_epoch);
  const int64_t total = total_steps(train, steps_per_epoch);
  const int32_t replays = a.attack ? a.attack->replays() : 1;
  if (replays < 1) fail(ExitCode::plugin, a.attack->who() + ": replays must be at least 1");
  const TrainingAttackConfig attack_config = config.training_attack();

  Optimizer optimizer(train.optimizer, trainable(a));
  at::Generator augment = at::detail::createCPUGenerator(component_seed(config.seed, "augmentation"));
  at::Tensor step_tensor = at::zeros({}, at::kLong);

  const fs::path checkpoints = run_dir / "checkpoints";
  const fs::path untrained_file = run_dir / "eval_untrained.json";
  int64_t step = 0;
  std::optional<fs::path> resume_from = request.resume ? newest_checkpoint(checkpoints) : std::nullopt;
  json untrained = json::object();
  if (resume_from) {
    step = restore(*resume_from, a, optimizer, augment);
    log(LogLevel::info, "resumed from " + resume_from->string() + " at step " + std::to_string(step));
    if (std::ifstream in(untrained_file); in) untrained = json::parse(in, nullptr, false);
  } else {
    if (request.resume) log(LogLevel::warn, "--resume: no checkpoint in " + checkpoints.string() + "; starting fresh");
    if (const auto existing = newest_checkpoint(checkpoints); existing && !request.fresh) {
      fail(ExitCode::usage, "run directory " + run_dir.string() + " already holds checkpoints (" + existing->string() +
                                "); continue it with --resume, start over with --fresh, or set another run.dir");
    }
    remove_tree(checkpoints);
    fs::remove(run_dir / "metrics.jsonl");
    untrained = evaluate_all(a, data, config, run_dir, /*untrained_controls=*/true);
    write_file_atomically(untrained_file, untrained.dump(2));
  }

  log(LogLevel::info, "training " + std::to_string(total) + " steps (" + std::to_string(steps_per_epoch) +
                          " per epoch) of " + std::to_string(train.batch_size) + " images x " +
                          std::to_string(views_per_image) + " views" +
                          (a.attack ? ", attack " + a.attack->info().name +
                                          (attack_config.from_epoch > 0 ? " from epoch " + std::to_string(attack_config.from_epoch) : "") +
                                          (replays > 1 ? ", " + std::to_string(replays) + " replays per minibatch" : "")
                                    : std::string(", clean")));
  const std::vector<std::string> attacked = a.objective->attacked_inputs();
  // With m replays every minibatch makes m updates; the schedule spans them all, unless the reference's
  // quirk is asked for (its schedule length ignores m, so the cosine runs past its end).
  const int64_t updates_total = train.free_schedule_undivided ? total : total * replays;
  at::Tensor nonfinite = at::zeros({}, at::TensorOptions().dtype(at::kBool).device(request.device));
  std::optional<fs::path> last_checkpoint = resume_from;
  Progress progress(step, total);
  const int64_t first_step = step;
  // The training attack of an epoch: [attack] from its from_epoch, overridden by [[attack_schedule]].
  const auto attack_at = [&](int64_t epoch) -> const Attack* {
    const Attack* chosen = (a.attack && epoch >= attack_config.from_epoch) ? a.attack.get() : nullptr;
    for (const auto& entry : config.attack_schedule) {
      if (epoch < entry.from_epoch) break;
      chosen = nullptr;
      for (const auto& [id, candidate] : a.evaluation_attacks)
        if (id == entry.attack) chosen = candidate.get();
    }
    return chosen;
  };
  const Attack* current_attack = nullptr;
  int64_t updates = optimizer_updates(optimizer), attack_calls = 0, backward_passes = 0, oracle_calls = 0, crops_seen = 0;
  const auto train_start = std::chrono::steady_clock::now();
  a.backbone->set_training(true);
  a.objective->set_training(true);
  if (a.attack) a.attack->set_training(true);

  while (step < total) {
    const at::Tensor indices = sampler.batch(step / steps_per_epoch, step % steps_per_epoch);
    const at::Tensor device_indices = indices.to(request.device);
    const at::Tensor images = data.train.images.index_select(0, device_indices);
    TensorMap views;
    for (const ViewRecipe* recipe : groups) views.insert(recipe->name, make_views(*recipe, images, augment));
    const TensorMap inputs = a.objective->prepare(views, device_indices);

    LossResult result;
    const Attack* attack = attack_at(step / steps_per_epoch);
    if (attack != current_attack || step == first_step) {
      log(LogLevel::info, "epoch " + std::to_string(step / steps_per_epoch) + ": training " +
                              (attack ? "with attack " + attack->who() : std::string("clean")));
      current_attack = attack;
    }
    const bool attacking = attack != nullptr;
    for (int32_t replay = 0; replay < (attacking ? attack->replays() : 1); ++replay) {
      TensorMap adversarial;
      optimizer.zero_grad();
      if (attacking) {
        TensorMap targets;
        for (const auto& name : attacked) {
          if (!inputs.contains(name)) {
            fail(ExitCode::plugin, a.objective->who() + ": attacked input '" + name + "' is not among its prepared inputs");
          }
          targets.insert(name, inputs[name]);
        }
        ObjectiveOracle oracle(*a.objective, *a.backbone, inputs, attack_config.accumulate_weight_grads);
        const cfamc_oracle c_oracle = oracle.get();
        if (attack_config.eval_mode_bn) set_encoder_training(a, false);
        adversarial = attack->perturb(c_oracle, targets);
        if (attack_config.eval_mode_bn) set_encoder_training(a, true);
        oracle_calls += oracle.calls();
        // Free adversarial training: the same backward pass yields the input gradient the attack keeps.
        if (attack->observes())
          for (auto& item : adversarial) item.value() = item.value().detach().requires_grad_(true);
        ++attack_calls;
      }
      result = a.objective->loss(*a.backbone, inputs, adversarial, CFAMC_PHASE_TRAIN);
      result.loss.backward();
      ++backward_passes;
      crops_seen += train.batch_size * views_per_image;
      if (attacking && attack->observes()) {
        TensorMap gradients;
        for (const auto& item : adversarial) gradients.insert(item.key(), item.value().grad());
        attack->observe(gradients);
      }
      optimizer.step(learning_rate(train.schedule, train.lr, updates++, updates_total));
      nonfinite.logical_or_(result.loss.detach().isfinite().logical_not());
    }
    step_tensor.fill_(++step);

    const bool log_now = step % train.log_every == 0 || step == total;
    const bool stop_now = step == request.until_step;
    const bool checkpoint_now =
        (train.checkpoint_every > 0 && step % train.checkpoint_every == 0) || step == total || stop_now;
    if (!log_now && !checkpoint_now) {
      progress.update(step, "", false);
      continue;
    }
    if (nonfinite.item<bool>()) {
      progress.finish();
      fail(ExitCode::diverged, "the training loss became NaN or infinite at or before step " + std::to_string(step) +
                                   "; the last good checkpoint is " +
                                   (last_checkpoint ? last_checkpoint->string() : std::string("none")));
    }
    if (log_now) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - train_start).count();
      const double images_per_s = static_cast<double>((step - first_step) * train.batch_size) / std::max(seconds, 1e-9);
      json line = {{"step", step},
                   {"epoch", static_cast<double>(step) / static_cast<double>(steps_per_epoch)},
                   {"lr", learning_rate(train.schedule, train.lr, updates - 1, updates_total)},
                   {"loss", result.loss.item<double>()},
                   {"images_per_s", images_per_s}};
      for (const auto& item : result.scalars) line[item.key()] = item.value().item<double>();
      append_line(run_dir / "metrics.jsonl", line);
      char detail[64];
      std::snprintf(detail, sizeof(detail), "loss %.4f", line["loss"].get<double>());
      progress.update(step, detail, true);
    }
    if (checkpoint_now) {
      last_checkpoint = save_checkpoint(checkpoints, step, run_state(a, optimizer, step_tensor, augment), train.keep_checkpoints);
    }
    if (stop_now && step < total) {
      progress.finish();
      log(LogLevel::info, "stopped after step " + std::to_string(step) + " as asked (--until-step); continue with --resume");
      return;
    }
  }
  progress.finish();
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - train_start).count();
  const int64_t images_seen = (step - first_step) * train.batch_size;

  json eval = evaluate_all(a, data, config, run_dir, /*untrained_controls=*/false);
  for (auto& [id, metrics] : untrained.items()) eval[id] = metrics;
  json summary = {
      {"run",
       {{"seed", config.seed},
        {"device", request.device},
        {"run_file", config.file},
        {"versions", {{"cfamc", CFAMC_VERSION}, {"libtorch", CFAMC_TORCH_VERSION}, {"cuda_build", CFAMC_TORCH_CUDA_VERSION}}},
        {"wall_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count()},
        {"resumed_from_step", first_step},
        {"attack", a.attack ? a.attack->info().name : std::string("none")},
        {"attack_schedule", [&] {
           json entries = json::array();
           for (const auto& e : config.attack_schedule) entries.push_back({{"from_epoch", e.from_epoch}, {"attack", e.attack}});
           return entries;
         }()}}},
      {"train",
       {{"steps", step},
        {"steps_per_epoch", steps_per_epoch},
        {"replays", replays},
        {"optimizer_updates", updates},
        {"attack_calls", attack_calls},
        {"oracle_calls", oracle_calls},
        {"training_backward_passes", backward_passes},
        {"seconds", train_seconds},
        {"images_per_s", static_cast<double>(images_seen) / std::max(train_seconds, 1e-9)},
        {"crops_per_s", static_cast<double>(crops_seen) / std::max(train_seconds, 1e-9)}}},
      {"eval", eval}};
  write_file_atomically(run_dir / "summary.json", summary.dump(2) + "\n");
  log(LogLevel::info, "summary: " + (run_dir / "summary.json").string());
}

}  // namespace cfamc::host
