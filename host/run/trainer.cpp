#include "run/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <cfamc/transfer.hpp>

#include <chrono>
#include <csignal>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "augment/views.hpp"
#include "data/datasets.hpp"
#include "data/sampler.hpp"
#include "failure.hpp"
#include "log.hpp"
#include "run/assembly.hpp"
#include "run/data_parallel.hpp"
#include "run/evaluation.hpp"
#include "run/event_file.hpp"
#include "run/run_config.hpp"
#include "run/interruption.hpp"
#include "run/model_file.hpp"
#include "run/run_dir.hpp"
#include "run/run_state.hpp"
#include "run/step_memory.hpp"
#include "train/checkpoint.hpp"
#include "train/checkpoint_files.hpp"
#include "train/progress.hpp"
#include "train/schedule.hpp"
#include "train/train_step.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace cfamc::host {
namespace {

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void append_line(const fs::path& file, const json& line) {
  std::ofstream out(file, std::ios::app);
  out << line.dump() << "\n";
}

// Every number in `metrics`, tagged by its path ("eval/linear_probe/robust_accuracy/pgd8").
void add_scalars(TensorBoardEvents& events, const std::string& tag, const json& metrics, int64_t step) {
  if (metrics.is_number()) events.scalar(tag, metrics.get<double>(), step);
  if (metrics.is_object())
    for (const auto& [key, value] : metrics.items()) add_scalars(events, tag + "/" + key, value, step);
}

json schedule_json(const RunConfig& config) {
  json entries = json::array();
  for (const auto& e : config.attack_schedule) entries.push_back({{"from_epoch", e.from_epoch}, {"attack", e.attack}});
  return entries;
}

// `[backbone] sync_bn` for the scope of the training loop only (dist/world.hpp says why).
class SyncBatchNormWhileTraining {
 public:
  SyncBatchNormWhileTraining(World* world, bool on) : world_(world) {
    if (world_) world_->sync_batch_norm = on;
  }
  ~SyncBatchNormWhileTraining() {
    if (world_) world_->sync_batch_norm = false;
  }
  SyncBatchNormWhileTraining(const SyncBatchNormWhileTraining&) = delete;
  SyncBatchNormWhileTraining& operator=(const SyncBatchNormWhileTraining&) = delete;

 private:
  World* world_;
};

// One run, top to bottom: start (fresh with the controls, or resumed), train, evaluate, summarise.
class TrainingRun {
 public:
  TrainingRun(const RunConfig& config, const Registry& registry, const RunRequest& request);
  void start();
  bool train();  // false: stopped early by --until-step
  void finish();

 private:
  bool resume();
  void start_fresh();
  std::unique_ptr<GradientAverager> make_averager() const;
  const Attack* attack_at(int64_t epoch) const;
  LossResult step(const Attack* attack);
  // interruption(), the same on every process: a signal that reached one process stops them all after the
  // same step (a data-parallel job's processes would otherwise wait for each other in different exchanges).
  int agreed_interruption() const { return world_ ? world_->agreed_max(interruption()) : interruption(); }
  // Failure(interrupted / terminated) when `signal` (interruption()'s value) is not 0.
  void stop_if_interrupted(int signal);
  [[noreturn]] void diverged(const std::string& what_became, int64_t step);
  std::string describe() const;
  TensorMap next_inputs();
  void after_step(const LossResult& result, bool stop_now);
  void log_metrics(const LossResult& result);
  double schedule_lr(int64_t update) const;

  const RunConfig& config_;
  const Registry& registry_;
  const RunRequest& request_;
  World* const world_;
  const bool lead_;  // rank 0, or the only process: writes the run directory
  const Clock::time_point wall_start_ = Clock::now();
  const TrainingAttackConfig attack_config_;
  EvaluationData data_;
  Assembly assembly_;
  std::vector<const ViewRecipe*> groups_;
  int64_t views_per_image_ = 0;
  TrainConfig train_;
  EpochSampler sampler_;
  std::optional<BatchShare> share_;  // this process's rows of every batch; none: all of them
  int64_t steps_per_epoch_, total_, updates_total_;
  Optimizer optimizer_;
  at::Generator augment_;
  RunState state_;
  std::unique_ptr<GradientAverager> averager_;
  TrainStep step_runner_;
  int64_t step_ = 0, first_step_ = 0;
  json controls_ = json::object();
  std::optional<fs::path> last_checkpoint_;
  const Attack* current_attack_ = nullptr;
  Clock::time_point train_start_;
  double train_seconds_ = 0;
  std::optional<Progress> progress_;
  std::optional<TensorBoardEvents> events_;
};

TrainingRun::TrainingRun(const RunConfig& config, const Registry& registry, const RunRequest& request)
    : config_(config),
      registry_(registry),
      request_(request),
      world_(request.world),
      lead_(world_ == nullptr || world_->rank() == 0),
      attack_config_(config.training_attack()),
      data_(load_evaluation_data(config.data, request.compute.device)),
      assembly_(assemble(config, registry, request.compute.device)),
      groups_(view_groups_of(config, *assembly_.objective)),
      train_(config.train),
      sampler_(data_.pretrain.images.size(0), train_.batch_size, component_seed(config.seed, "sampler"),
               world_ ? world_->rank() : 0, world_ ? world_->size() : 1),
      share_(world_ ? std::optional<BatchShare>(BatchShare{sampler_.share_begin(),
                                                           sampler_.share_begin() + sampler_.share_size(),
                                                           train_.batch_size})
                    : std::nullopt),
      steps_per_epoch_(sampler_.steps_per_epoch()),
      total_(total_steps(train_, steps_per_epoch_)),
      optimizer_(train_.optimizer, assembly_.trainable()),
      augment_(at::detail::createCPUGenerator(component_seed(config.seed, "augmentation"))),
      state_(config, assembly_, optimizer_, augment_),
      averager_(make_averager()),
      step_runner_(*assembly_.backbone, *assembly_.objective, optimizer_, attack_config_, request.compute.precision,
                   c10::Device(request.compute.device).type(), [this](int64_t update) { return schedule_lr(update); },
                   averager_.get()) {
  for (const ViewRecipe* recipe : groups_) views_per_image_ += recipe->count;
  set_steps_per_epoch(train_, steps_per_epoch_);
  // With m replays every minibatch makes m updates; the schedule spans them all, unless the reference's
  // quirk is asked for (its schedule length ignores m, so the cosine runs past its end).
  const int32_t replays = assembly_.attack ? assembly_.attack->replays() : 1;
  updates_total_ = train_.free_schedule_undivided ? total_ : total_ * replays;
}

// Free training's attack may add its own steps' weight gradients to the update: then the gradients are
// averaged once finished, not as the backward pass makes them.
std::unique_ptr<GradientAverager> TrainingRun::make_averager() const {
  if (world_ == nullptr) return nullptr;
  std::vector<at::Tensor> weights;
  for (const auto& item : assembly_.trainable()) weights.push_back(item.value());
  return std::make_unique<GradientAverager>(*world_, weights, !attack_config_.accumulate_weight_grads);
}

double TrainingRun::schedule_lr(int64_t update) const {
  return learning_rate(train_.schedule, train_.lr, update, updates_total_);
}

void TrainingRun::start() {
  if (world_) warn_single_process_plugins(*world_, assembly_);
  check_step_memory(*assembly_.backbone, groups_, data_.pretrain.images.size(1), sampler_.share_size(), request_.compute);
  if (!(request_.resume && resume())) start_fresh();
  // The same weights everywhere, whatever each process read or drew.
  if (world_) broadcast_weights(*world_, assembly_);
}

// The newest checkpoint that verifies, restored; false when there is none at all.
bool TrainingRun::resume() {
  std::optional<LoadedCheckpoint> newest;
  if (lead_) newest = newest_usable_checkpoint(request_.dir.checkpoints());
  if (world_) newest = share_checkpoint(*world_, request_.dir, std::move(newest));
  if (newest) {
    take_rank_local_state(world_, config_, assembly_, newest->tensors, newest->file);
    step_ = first_step_ = state_.restore(newest->tensors, newest->file);
    last_checkpoint_ = newest->file;
    log(LogLevel::info, "resumed from " + newest->file.string() + " at step " + std::to_string(step_));
    request_.dir.drop_metrics_after(step_);
    if (std::ifstream in(request_.dir.untrained()); in) controls_ = json::parse(in, nullptr, false);
    return true;
  }
  if (!checkpoints_in(request_.dir.checkpoints()).empty()) {
    fail(ExitCode::other, "no checkpoint in " + request_.dir.checkpoints().string() +
                              " can be used (each one is damaged, see above); start over with --fresh");
  }
  log(LogLevel::warn, "--resume: no checkpoint in " + request_.dir.checkpoints().string() + "; starting fresh");
  return false;
}

// A bad [init] checkpoint stops the run before the directory is touched or the controls spend their time.
void TrainingRun::start_fresh() {
  const std::optional<TensorMap> init = open_init_checkpoint(config_, assembly_);
  request_.dir.prepare_fresh_start(request_.fresh, config_.file);
  controls_ = run_controls(assembly_, data_, config_, registry_, request_.compute, request_.dir.path());
  write_file_atomically(request_.dir.untrained(), controls_.dump(2));
  // After the controls, which measure the network as its seed made it.
  if (init) apply_init_checkpoint(config_, assembly_, *init);
}

// The training attack of an epoch: [attack] from its from_epoch, overridden by [[attack_schedule]].
const Attack* TrainingRun::attack_at(int64_t epoch) const {
  const Attack* chosen = (assembly_.attack && epoch >= attack_config_.from_epoch) ? assembly_.attack.get() : nullptr;
  for (const auto& entry : config_.attack_schedule) {
    if (epoch < entry.from_epoch) break;
    chosen = assembly_.named_attack(entry.attack);
  }
  return chosen;
}

TensorMap TrainingRun::next_inputs() {
  const at::Tensor indices =
      cfamc::on_device_of(data_.pretrain.images, sampler_.batch(step_ / steps_per_epoch_, step_ % steps_per_epoch_));
  const at::Tensor images = data_.pretrain.images.index_select(0, indices);
  TensorMap views;
  for (const ViewRecipe* recipe : groups_) views.insert(recipe->name, make_views(*recipe, images, augment_, share_));
  return assembly_.objective->prepare(views, indices);
}

std::string TrainingRun::describe() const {
  std::string attack = ", clean";
  if (assembly_.attack) {
    const int32_t replays = assembly_.attack->replays();
    attack = ", attack " + assembly_.attack->info().name +
             (attack_config_.from_epoch > 0 ? " from epoch " + std::to_string(attack_config_.from_epoch) : "") +
             (replays > 1 ? ", " + std::to_string(replays) + " replays per minibatch" : "");
  }
  const std::string processes =
      world_ ? " (" + std::to_string(sampler_.share_size()) + " in each of " + std::to_string(world_->size()) + " processes)" : "";
  return "training " + std::to_string(total_) + " steps (" + std::to_string(steps_per_epoch_) + " per epoch) of " +
         std::to_string(train_.batch_size) + " images" + processes + " x " + std::to_string(views_per_image_) + " views" + attack +
         ", " + name_of(request_.compute.precision) + " on " + request_.compute.device;
}

bool TrainingRun::train() {
  if (request_.until_step > 0 && step_ >= request_.until_step) {
    log(LogLevel::info, "already at step " + std::to_string(step_) + ", not before --until-step " +
                            std::to_string(request_.until_step) + "; nothing to do");
    return false;
  }
  log(LogLevel::info, describe());
  progress_.emplace(step_, total_, lead_);
  if (config_.tensorboard && lead_) {
    fs::create_directories(request_.dir.tensorboard());
    events_.emplace(request_.dir.tensorboard());
    if (step_ > 0) events_->restart(step_ + 1);
  }
  assembly_.backbone->set_training(true);
  assembly_.objective->set_training(true);
  if (assembly_.attack) assembly_.attack->set_training(true);
  const SyncBatchNormWhileTraining sync_batch_norm(world_, config_.sync_batch_norm());
  train_start_ = Clock::now();
  while (step_ < total_) {
    const Attack* attack = attack_at(step_ / steps_per_epoch_);
    if (attack != current_attack_ || step_ == first_step_) {
      log(LogLevel::info, "epoch " + std::to_string(step_ / steps_per_epoch_) + ": training " +
                              (attack ? "with attack " + attack->who() : std::string("clean")));
      current_attack_ = attack;
    }
    const LossResult result = step(attack);
    ++step_;
    // One reading of the flag decides both the checkpoint and the exit: a signal arriving in between would
    // otherwise stop the run without the checkpoint it was promised.
    const int signal = agreed_interruption();
    const bool stop_now = step_ == request_.until_step || signal != 0;
    after_step(result, stop_now);
    stop_if_interrupted(signal);
    if (stop_now && step_ < total_) {
      progress_->finish();
      log(LogLevel::info, "stopped after step " + std::to_string(step_) + " as asked (--until-step); continue with --resume");
      return false;
    }
  }
  progress_->finish();
  train_seconds_ = seconds_since(train_start_);
  stop_if_interrupted(agreed_interruption());  // the last step always wrote a checkpoint
  return true;
}

// One step; a plugin that fails on non-finite weights or features reports divergence, not its own error.
LossResult TrainingRun::step(const Attack* attack) {
  const TensorMap inputs = next_inputs();
  try {
    return step_runner_.run(inputs, attack);
  } catch (const Failure& e) {
    if (world_) world_->sync_batch_norm = false;  // the check below runs on this process alone
    if (e.code() == ExitCode::plugin && step_runner_.diverged_encoder(inputs)) diverged("the encoder's weights or features became NaN, infinite or too large for float32", step_ + 1);
    throw;
  }
}

void TrainingRun::stop_if_interrupted(int signal) {
  if (signal == 0) return;
  if (progress_) progress_->finish();
  const std::string where = last_checkpoint_ ? "; checkpoint " + last_checkpoint_->string() + "; continue with --resume"
                                             : "; no checkpoint was written yet";
  fail(signal == SIGTERM ? ExitCode::terminated : ExitCode::interrupted,
       std::string("stopped by ") + interruption_name(signal) + " after step " + std::to_string(step_) + where);
}

void TrainingRun::diverged(const std::string& what_became, int64_t step) {
  if (progress_) progress_->finish();
  fail(ExitCode::diverged, what_became + " at or before step " +
                               std::to_string(step) + "; the last good checkpoint is " +
                               (last_checkpoint_ ? last_checkpoint_->string() : std::string("none")));
}

// Logging and checkpoints, where the device is read: divergence is checked here too, so no checkpoint is
// ever written from NaN weights and the hot path has no synchronisation.
void TrainingRun::after_step(const LossResult& result, bool stop_now) {
  const bool log_now = step_ % train_.log_every == 0 || step_ == total_;
  const bool checkpoint_now =
      (train_.checkpoint_every > 0 && step_ % train_.checkpoint_every == 0) || step_ == total_ || stop_now;
  if (!log_now && !checkpoint_now) {
    progress_->update(step_, "", false);
    return;
  }
  if (on_any_process(world_, step_runner_.diverged())) diverged("the training loss became NaN or infinite", step_);
  if (checkpoint_now && step_runner_.diverged_weights()) diverged("the weights became NaN, infinite or too large for float32", step_);
  if (log_now) log_metrics(result);
  if (checkpoint_now) {
    if (world_) broadcast_buffers(*world_, assembly_);  // rank 0's BatchNorm statistics, kept by every process
    TensorMap state = state_.gather(step_);
    add_rank_local_state(world_, config_, assembly_, state);
    // Every process names rank 0's checkpoint in its messages: the one a resume continues from.
    last_checkpoint_ = lead_ ? save_checkpoint(request_.dir.checkpoints(), step_, state, train_.keep_checkpoints)
                             : fs::path(config_.dir) / "checkpoints" / checkpoint_name(step_);
  }
}

void TrainingRun::log_metrics(const LossResult& result) {
  const double images_per_s =
      static_cast<double>((step_ - first_step_) * train_.batch_size) / std::max(seconds_since(train_start_), 1e-9);
  // The processes' mean: a loss averaged over each share is the whole batch's.
  std::vector<at::Tensor> values{result.loss};
  for (const auto& item : result.scalars) values.push_back(item.value());
  const std::vector<double> means = averaged(world_, values);
  json line = {{"step", step_},
               {"epoch", static_cast<double>(step_) / static_cast<double>(steps_per_epoch_)},
               {"lr", schedule_lr(optimizer_.updates() - 1)},
               {"loss", means[0]},
               {"images_per_s", images_per_s}};
  for (size_t i = 0; i < result.scalars.size(); ++i) line[result.scalars[i].key()] = means[i + 1];
  if (lead_) append_line(request_.dir.metrics(), line);
  if (events_) {
    for (const auto& [key, value] : line.items())
      if (key != "step") events_->scalar("train/" + key, value.get<double>(), step_);
    events_->flush();
  }
  char detail[64];
  std::snprintf(detail, sizeof(detail), "loss %.4f", line["loss"].get<double>());
  progress_->update(step_, detail, true);
}

void TrainingRun::finish() {
  if (world_) broadcast_buffers(*world_, assembly_);  // every process evaluates the checkpointed encoder
  json eval = run_evaluation(assembly_.evaluation, assembly_, data_, config_, request_.compute.precision, request_.dir.path());
  for (auto& [id, metrics] : controls_.items()) eval[id] = metrics;
  const StepCounts& counts = step_runner_.counts();
  const double images = static_cast<double>((step_ - first_step_) * train_.batch_size);
  const double crops = static_cast<double>(counts.backward_passes * train_.batch_size * views_per_image_);
  json run = {{"seed", config_.seed},
              {"device", request_.compute.device},
              {"precision", name_of(request_.compute.precision)},
              {"processes", world_ ? world_->size() : 1},
              {"run_file", config_.file},
              {"versions", {{"cfamc", CFAMC_VERSION}, {"libtorch", CFAMC_TORCH_VERSION}, {"cuda_build", CFAMC_TORCH_CUDA_VERSION}}},
              {"wall_seconds", seconds_since(wall_start_)},
              {"resumed_from_step", first_step_},
              {"attack", assembly_.attack ? assembly_.attack->info().name : std::string("none")},
              {"attack_schedule", schedule_json(config_)}};
  json train = {{"steps", step_},
                {"steps_per_epoch", steps_per_epoch_},
                {"replays", assembly_.attack ? assembly_.attack->replays() : 1},
                {"optimizer_updates", optimizer_.updates()},
                {"attack_calls", counts.attack_calls},
                {"oracle_calls", counts.oracle_calls},
                {"training_backward_passes", counts.backward_passes},
                {"seconds", train_seconds_},
                {"images_per_s", images / std::max(train_seconds_, 1e-9)},
                {"crops_per_s", crops / std::max(train_seconds_, 1e-9)}};
  if (!lead_) return;
  const json summary = {{"run", run}, {"train", train}, {"eval", eval}};
  write_file_atomically(request_.dir.summary(), summary.dump(2) + "\n");
  if (events_) {
    add_scalars(*events_, "eval", eval, step_);
    events_->flush();
  }
  log(LogLevel::info, "summary: " + request_.dir.summary().string());
}

}  // namespace

void run_training(const RunConfig& config, const Registry& registry, const RunRequest& request) {
  TrainingRun run(config, registry, request);
  run.start();
  if (run.train()) run.finish();
}

}  // namespace cfamc::host
