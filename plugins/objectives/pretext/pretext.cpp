// The adversarial pretext objectives of Chen et al. (CVPR 2020, "Adversarial Robustness: From Self-Supervised
// Pre-Training to Fine-Tuning"): rotation, jigsaw and selfie, each alone, and the three as an ensemble with a
// penalty on their input gradients. The tasks live in rotation_task.hpp, jigsaw_task.hpp and selfie_task.hpp.
//
// Alone, the attack perturbs the task's input (the rotated image, the shuffled image, the image selfie cuts)
// to maximise its cross-entropy; training minimises 1/2 (CE clean + CE adversarial), or CE clean when training
// clean, with two forwards, adversarial first, each with its own batch statistics, as the reference's step.
//
// pretext_ensemble follows the reference's ensemble_pretrain.py: a shared trunk (the backbone's stages up to
// S - 1) with rotation on copy 0 and jigsaw on copy 1 of the last stage (its layer4_rotation, layer4_jigsaw),
// and selfie embedding its patches with the shared trunk alone (the reference's model(patches) stops at layer3,
// and its selfie has no layer4). Three perturbations, one per task's input. Training minimises the mean of the
// six cross-entropies + penalty_weight * h, h = gradient_diversity (gradient_diversity.hpp) of the input
// gradients of the three adversarial cross-entropies, taken with create_graph so that h's gradient reaches the
// weights; the attack maximises the sum of the three cross-entropies + penalty_weight * h, as the reference's
// PGD_attack_3module steps each input along its task's gradient plus penalty_weight times h's.
//
// Selfie and the ensemble need a backbone that runs by stages (ABI 1.3). Without them the components are made
// (the transformer at a placeholder width, never used) and the first loss fails in the encoder, with an error
// naming the backbone and this objective; create warns.
//
// Data-parallel runs: these losses stay per-process, with no collective. Every term is a mean over the
// images of a per-image quantity (a cross-entropy, a log-determinant of one image's gradients), so the mean
// over equal shares that the host's gradient averaging makes is the global batch's mean already.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gradient_diversity.hpp"
#include "jigsaw_task.hpp"
#include "rotation_task.hpp"
#include "selfie_task.hpp"

namespace {

using namespace cfamc::pretext;

cfamc_option_decl group_option(const char* what) {
  return cfamc::option("group", CFAMC_OPTION_STRING, "\"views\"", what);
}

std::vector<cfamc_option_decl> jigsaw_options() {
  return {
      cfamc::option("permutations", CFAMC_OPTION_INT, "30",
                    "tile orders besides the identity, drawn at create from the seed (Chen et al.: 30, 31 classes)"),
      cfamc::option("identity_probability", CFAMC_OPTION_FLOAT, "0.1",
                    "probability that an image keeps its tiles in place (class 0); the other orders share the rest"),
  };
}

// The reference's attention pooling: SelfieModel(n_layers = 12, ...) builds 12 + 1 encoder layers of d_model
// 1024 with 1024 / 64 = 16 heads and d_ff 2048.
std::vector<cfamc_option_decl> selfie_options() {
  return {
      cfamc::option("layers", CFAMC_OPTION_INT, "13", "transformer encoder layers of the attention pooling (reference: 13)"),
      cfamc::option("heads", CFAMC_OPTION_INT, "16",
                    "attention heads; must divide the patch embedding's width (reference: 16 on 1024)"),
      cfamc::option("feedforward", CFAMC_OPTION_INT, "2048", "width of each layer's feed-forward network (reference: 2048)"),
      cfamc::option("dropout", CFAMC_OPTION_FLOAT, "0.0",
                    "dropout in the transformer layers (reference: 0.1); LibTorch draws its masks from the global "
                    "generator, not the checkpointed stream, so above 0 a resumed run differs from an uninterrupted one"),
      cfamc::option("reference_double_softmax", CFAMC_OPTION_BOOL, "false",
                    "feed softmax(logits) to the cross-entropy, which applies log-softmax again, as the reference does"),
  };
}

SelfieSettings selfie_settings(const cfamc::Context& ctx, int32_t patch_stage) {
  return SelfieSettings{patch_stage,       ctx.integer("layers"), ctx.integer("heads"), ctx.integer("feedforward"),
                        ctx.real("dropout"), ctx.flag("reference_double_softmax")};
}

// The channels of `stage`, or, for a backbone without stages, a placeholder the first loss never reaches.
int64_t embedding_width(const cfamc::Context& ctx, int32_t stage, const char* objective) {
  if (ctx.num_stages() > 0) return ctx.stage_channels(stage);
  ctx.warn(std::string(objective) + " needs a backbone that runs by stages (plugin ABI 1.3), and the run's backbone "
                                    "offers none: the first training step will fail");
  return ctx.integer("heads");
}

std::vector<cfamc_option_decl> joined(std::vector<cfamc_option_decl> a, const std::vector<cfamc_option_decl>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// One pretext task as an objective of its own, on view group `group`.
template <class Task>
class SingleTask : public cfamc::Objective {
 public:
  explicit SingleTask(const cfamc::Context& ctx) : Objective(ctx), group_(ctx.text("group")) {}

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override { return {Task::kInput}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor&) override {
    cfamc::TensorMap inputs;
    task_->prepare(views[group_], group_, inputs);
    return inputs;
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase phase, cfamc::TensorMap& log) override {
    const bool attacked = adversarial.contains(Task::kInput);
    if (phase == CFAMC_PHASE_ATTACK) {
      return task_->cross_entropy(encoder, attacked ? adversarial[Task::kInput] : clean[Task::kInput], clean, "attack",
                                  log);
    }
    if (!attacked) return task_->cross_entropy(encoder, clean[Task::kInput], clean, "clean", log);
    const at::Tensor adversarial_ce = task_->cross_entropy(encoder, adversarial[Task::kInput], clean, "adv", log);
    const at::Tensor clean_ce = task_->cross_entropy(encoder, clean[Task::kInput], clean, "clean", log);
    return 0.5 * (clean_ce + adversarial_ce);
  }

 protected:
  // Takes `task` as this objective's, with its tensors under their own names (head.weight, tile_orders,
  // rng.state, ...), the names the single-task objectives checkpoint.
  void adopt(std::shared_ptr<Task> task) {
    task_ = std::move(task);
    for (const auto& item : task_->named_parameters(/*recurse=*/false)) register_parameter(item.key(), item.value());
    for (const auto& item : task_->named_buffers(/*recurse=*/false)) register_buffer(item.key(), item.value());
    for (const auto& item : task_->named_children()) register_module(item.key(), item.value());
    to(context().device());
  }

 private:
  std::string group_;
  std::shared_ptr<Task> task_;
};

class Rotation : public SingleTask<RotationTaskImpl> {
 public:
  static constexpr const char* name = "rotation";
  static constexpr const char* summary =
      "rotation pretext (0/90/180/270, balanced per batch), linear head on the backbone feature; "
      "attack perturbs the rotated image; loss 1/2 (CE clean + CE adv)";
  static std::vector<cfamc_option_decl> options() {
    return {group_option("the view group of the run file to consume: each of its images is rotated once (count = 1)")};
  }
  explicit Rotation(const cfamc::Context& ctx) : SingleTask(ctx) {
    adopt(std::make_shared<RotationTaskImpl>(ctx.feature_dim(), ctx.generator(), TaskRole{}));
  }
};

class Jigsaw : public SingleTask<JigsawTaskImpl> {
 public:
  static constexpr const char* name = "jigsaw";
  static constexpr const char* summary =
      "jigsaw pretext (4x4 tiles, identity + permutations fixed by the seed), linear head on the backbone "
      "feature; attack perturbs the shuffled image; loss 1/2 (CE clean + CE adv)";
  static std::vector<cfamc_option_decl> options() {
    return joined({group_option("the view group of the run file to consume: each of its images is shuffled once "
                                "(count = 1); its size must be divisible by 4")},
                  jigsaw_options());
  }
  explicit Jigsaw(const cfamc::Context& ctx) : SingleTask(ctx) {
    adopt(std::make_shared<JigsawTaskImpl>(ctx.feature_dim(), ctx.integer("permutations"),
                                           ctx.real("identity_probability"), ctx.generator(), TaskRole{}));
  }
};

class Selfie : public SingleTask<SelfieTaskImpl> {
 public:
  static constexpr const char* name = "selfie";
  static constexpr const char* summary =
      "selfie pretext (4x4 patches, 4 masked, 12 visible), patches embedded by the backbone to a stage, attention "
      "pooling, the masked patch at each position; attack perturbs the image; loss 1/2 (CE clean + CE adv)";
  static std::vector<cfamc_option_decl> options() {
    return joined({group_option("the view group of the run file to consume (count = 1); its size must be divisible "
                                "by 4"),
                   cfamc::option("patch_stage", CFAMC_OPTION_INT, "3",
                                 "the backbone stage whose globally pooled output embeds a patch (reference: layer3 "
                                 "of ResNet-50v2, 1024-d)")},
                  selfie_options());
  }
  explicit Selfie(const cfamc::Context& ctx) : SingleTask(ctx) {
    const int64_t stage = ctx.integer("patch_stage");
    if (ctx.num_stages() > 0 && (stage < 1 || stage > ctx.num_stages())) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "patch_stage = " + std::to_string(stage) + ", but the backbone has stages 1.." +
                                                 std::to_string(ctx.num_stages()));
    }
    const auto patch_stage = static_cast<int32_t>(stage);
    adopt(std::make_shared<SelfieTaskImpl>(embedding_width(ctx, patch_stage, name), selfie_settings(ctx, patch_stage),
                                           ctx.generator(), TaskRole{}));
  }
};

// One task's cross-entropy and, where asked, its input gradient, kept differentiable (create_graph).
struct TaskTerm {
  at::Tensor ce, input_gradient;
};

template <class Task>
TaskTerm task_term(Task& task, const cfamc::Encoder& encoder, const at::Tensor& input, const cfamc::TensorMap& clean,
                   const std::string& term, cfamc::TensorMap& log, bool with_gradient) {
  const at::Tensor x = with_gradient && !input.requires_grad() ? input.detach().requires_grad_(true) : input;
  TaskTerm out{task->cross_entropy(encoder, x, clean, term, log), at::Tensor()};
  if (with_gradient) {
    out.input_gradient = torch::autograd::grad({out.ce}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  }
  return out;
}

class PretextEnsemble : public cfamc::Objective {
 public:
  static constexpr const char* name = "pretext_ensemble";
  static constexpr const char* summary =
      "rotation, jigsaw and selfie on a shared trunk, rotation and jigsaw on copies 0 and 1 of the last stage; three "
      "perturbations; loss mean of six CEs + penalty_weight * log det of the normalised input gradients";
  static std::vector<cfamc_option_decl> options() {
    std::vector<cfamc_option_decl> declared = {
        group_option("the view group of the run file to consume (count = 1): each image is rotated, shuffled and cut "
                     "into patches; its size must be divisible by 4"),
        cfamc::option("penalty_weight", CFAMC_OPTION_FLOAT, "0.1",
                      "weight of the gradient-diversity penalty h in the loss and in the attack (reference: 0.1); 0 "
                      "skips the double backward")};
    return joined(joined(declared, jigsaw_options()), selfie_options());
  }

  explicit PretextEnsemble(const cfamc::Context& ctx)
      : Objective(ctx), group_(ctx.text("group")), penalty_weight_(ctx.real("penalty_weight")) {
    const int32_t stages = ctx.num_stages();
    check_stages(ctx, stages, ctx.num_stage_copies());
    at::Generator generator = ctx.generator();
    const int64_t feature_dim = ctx.feature_dim();
    rotation_ = register_module("rotation", RotationTask(feature_dim, split_generator(generator), TaskRole{"rotation_", 0}));
    jigsaw_ = register_module("jigsaw", JigsawTask(feature_dim, ctx.integer("permutations"), ctx.real("identity_probability"),
                                                   split_generator(generator), TaskRole{"jigsaw_", 1}));
    const int32_t trunk = std::max(stages - 1, 1);
    selfie_ = register_module("selfie", SelfieTask(embedding_width(ctx, trunk, name), selfie_settings(ctx, trunk),
                                                   split_generator(generator), TaskRole{"selfie_", kWholeNetwork}));
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override {
    return {RotationTaskImpl::kInput, JigsawTaskImpl::kInput, SelfieTaskImpl::kInput};
  }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor&) override {
    cfamc::TensorMap inputs;
    rotation_->prepare(views[group_], group_, inputs);
    jigsaw_->prepare(views[group_], group_, inputs);
    selfie_->prepare(views[group_], group_, inputs);
    return inputs;
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase phase, cfamc::TensorMap& log) override {
    const bool keep_graph = at::GradMode::is_enabled();
    torch::AutoGradMode grad_mode(true);  // h differentiates the task losses, whatever the caller's mode
    const bool attacked = adversarial.contains(RotationTaskImpl::kInput);
    const std::string term = phase == CFAMC_PHASE_ATTACK ? "attack" : attacked ? "adv" : "clean";
    const std::vector<TaskTerm> probed = task_terms(encoder, attacked ? adversarial : clean, clean, term, log,
                                                    penalty_weight_ != 0);
    at::Tensor loss = probed[0].ce + probed[1].ce + probed[2].ce;
    if (phase == CFAMC_PHASE_TRAIN && attacked) {
      const std::vector<TaskTerm> unperturbed = task_terms(encoder, clean, clean, "clean", log, false);
      loss = (loss + unperturbed[0].ce + unperturbed[1].ce + unperturbed[2].ce) / 6;
    } else if (phase == CFAMC_PHASE_TRAIN) {
      loss = loss / 3;
    }
    if (penalty_weight_ != 0) {
      const at::Tensor h = gradient_diversity({probed[0].input_gradient, probed[1].input_gradient, probed[2].input_gradient});
      log.insert("penalty_" + term, h.detach());
      loss = loss + penalty_weight_ * h;
    }
    return keep_graph ? loss : loss.detach();
  }

 private:
  // Needs the shared trunk (at least 2 stages) and the copies 0 and 1 of the last stage; a backbone without
  // stages fails at the first loss, where the host's error names it.
  static void check_stages(const cfamc::Context& ctx, int32_t stages, int32_t copies) {
    if (stages == 0) return;
    if (stages < 2) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "pretext_ensemble shares the backbone's stages before the last one, "
                                                  "and this backbone has a single stage");
    }
    if (copies < 2) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "pretext_ensemble trains rotation on copy 0 and jigsaw on copy 1 of the "
                                             "backbone's last stage, which has " + std::to_string(copies) +
                                                 ": set the backbone's last_stage_copies = 2");
    }
    if (copies > 2) {
      ctx.warn("the backbone's last stage has " + std::to_string(copies) + " copies; pretext_ensemble trains copies 0 "
               "and 1 (selfie runs the shared trunk, as the reference's ensemble), so copies 2.. stay untrained");
    }
  }

  // Rotation, jigsaw and selfie on `inputs` (their clean or adversarial inputs), labels from `clean`.
  std::vector<TaskTerm> task_terms(const cfamc::Encoder& encoder, const cfamc::TensorMap& inputs,
                                   const cfamc::TensorMap& clean, const std::string& term, cfamc::TensorMap& log,
                                   bool with_gradients) {
    return {task_term(rotation_, encoder, inputs[RotationTaskImpl::kInput], clean, term, log, with_gradients),
            task_term(jigsaw_, encoder, inputs[JigsawTaskImpl::kInput], clean, term, log, with_gradients),
            task_term(selfie_, encoder, inputs[SelfieTaskImpl::kInput], clean, term, log, with_gradients)};
  }

  std::string group_;
  double penalty_weight_;
  RotationTask rotation_{nullptr};
  JigsawTask jigsaw_{nullptr};
  SelfieTask selfie_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("pretext", "0.1.0", cfamc::component<Rotation>(), cfamc::component<Jigsaw>(), cfamc::component<Selfie>(),
             cfamc::component<PretextEnsemble>())
