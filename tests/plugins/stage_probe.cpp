// An objective that runs the backbone by stages through the host's encoder (ABI 1.3), to test stages across
// the plugin boundary: up to `split_stage`, then on to the feature with copy `copy` of the last stage. Its loss
// is the mean squared feature plus a head on the pooled stage output (built in `create` from the stage's
// channels, as an objective with a head on a stage must), or, with `penalty`, the squared norm of the input
// gradient of the squared feature, taken with create_graph so that it can be differentiated again.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

namespace {

class StageProbe : public cfamc::Objective {
 public:
  static constexpr const char* name = "stage_probe";
  static constexpr const char* summary = "runs the backbone by stages through the encoder (tests)";
  static std::vector<cfamc_option_decl> options() {
    return {cfamc::option("split_stage", CFAMC_OPTION_INT, "2", "the stage where the forward pass is split"),
            cfamc::option("copy", CFAMC_OPTION_INT, "0", "the copy of the last stage"),
            cfamc::option("penalty", CFAMC_OPTION_BOOL, "false", "the loss is the squared input-gradient norm"),
            cfamc::option("check_at_create", CFAMC_OPTION_BOOL, "false", "refuse a backbone without stages in create")};
  }
  explicit StageProbe(const cfamc::Context& ctx)
      : Objective(ctx),
        split_(static_cast<int32_t>(ctx.integer("split_stage"))),
        copy_(static_cast<int32_t>(ctx.integer("copy"))),
        penalty_(ctx.flag("penalty")) {
    if (ctx.flag("check_at_create") && ctx.num_stages() == 0) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "stage_probe needs a backbone that runs by stages");
    }
    if (ctx.flag("check_at_create") && copy_ >= ctx.num_stage_copies()) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "copy = " + std::to_string(copy_) + ", but the backbone has " +
                                                 std::to_string(ctx.num_stage_copies()) + " copies of its last stage");
    }
    // Without stages the head is never used: the first loss fails in the encoder.
    head_ = register_module("head", torch::nn::Linear(std::max<int64_t>(ctx.stage_channels(split_), 1), 1));
  }

  std::vector<std::string> view_groups() const override { return {"views"}; }
  std::vector<std::string> attacked_inputs() const override { return {"views"}; }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap&, cfamc_phase,
                  cfamc::TensorMap& log) override {
    log.insert("num_stages", torch::tensor(encoder.num_stages()));
    log.insert("num_stage_copies", torch::tensor(encoder.num_stage_copies()));
    log.insert("split_channels", torch::tensor(encoder.stage_channels(split_)));
    if (penalty_) return input_gradient_penalty(encoder, clean["views"]);
    const at::Tensor stage = encoder.stages(clean["views"], 0, split_, copy_);
    const at::Tensor feature = encoder.stages(stage, split_, CFAMC_STAGE_FEATURE, copy_);
    return feature.square().mean() + head_->forward(stage.mean({2, 3})).mean();
  }

 private:
  at::Tensor input_gradient_penalty(const cfamc::Encoder& encoder, const at::Tensor& images) const {
    const at::Tensor x = images.detach().requires_grad_(true);
    const at::Tensor stage = encoder.stages(x, 0, split_, copy_);
    const at::Tensor feature = encoder.stages(stage, split_, CFAMC_STAGE_FEATURE, copy_);
    const at::Tensor gradient = torch::autograd::grad({feature.square().sum()}, {x}, {}, true, true)[0];
    return gradient.square().sum();
  }

  int32_t split_, copy_;
  bool penalty_;
  torch::nn::Linear head_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("stage_probe", "0.0.1", cfamc::component<StageProbe>())
