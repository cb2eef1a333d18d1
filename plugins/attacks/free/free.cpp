// Free adversarial training (Shafahi et al. 2019), as CF-AMC-SSL uses it in multi-crop SSL: one
// perturbation, shaped like the attacked batch, kept across replays and minibatches; the host replays each
// minibatch `replays` times and after each training backward hands over the input gradient, from which
// delta <- clip(delta + a sign(g), +-eps), then clip(x + delta, 0, 1) - x. No extra forward or backward.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

namespace {

class FreeReplayAttack : public cfamc::Attack {
 public:
  static constexpr const char* name = "free";
  static constexpr const char* summary = "free adversarial training: a replayed, persistent perturbation (no extra passes)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius of the L-inf ball, in pixel units"),
        cfamc::option("step_size", CFAMC_OPTION_FLOAT, "\"8/255\"", "step per replay, in pixel units"),
        cfamc::option("replays", CFAMC_OPTION_INT, "3", "times the host replays each minibatch (m)"),
        cfamc::option("reproject_warm_start", CFAMC_OPTION_BOOL, "true",
                      "project the carried perturbation onto a new minibatch's [0,1] box; the reference does not (false)"),
    };
  }

  explicit FreeReplayAttack(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        step_size_(ctx.real("step_size")),
        replays_(static_cast<int32_t>(ctx.integer("replays"))),
        reproject_(ctx.flag("reproject_warm_start")) {
    if (epsilon_ < 0 || step_size_ < 0 || replays_ < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "epsilon and step_size must not be negative, replays at least 1");
    }
    // The perturbation is state: checkpointed, and restored (with its shape) on resume.
    delta_ = register_buffer("delta", torch::empty({0}, torch::TensorOptions().device(ctx.device())));
  }

  int32_t replays() const override { return replays_; }

  cfamc::TensorMap perturb(const cfamc::Oracle&, const cfamc::TensorMap& inputs) override {
    if (inputs.size() != 1) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "free: perturbs one attacked input; the objective names " +
                                                      std::to_string(inputs.size()));
    }
    torch::NoGradGuard no_grad;
    name_ = inputs.keys()[0];
    clean_ = inputs[name_].detach();
    if (delta_.sizes() != clean_.sizes()) {
      delta_.set_data(torch::zeros_like(clean_));  // the first batch, or a batch of another shape
    } else if (reproject_ && !same_batch(clean_)) {
      delta_.copy_((clean_ + delta_).clamp(0, 1) - clean_);
    }
    last_ = clean_;
    cfamc::TensorMap out;
    out.insert(name_, clean_ + delta_);
    return out;
  }

  void observe(const cfamc::TensorMap& gradients) override {
    if (!gradients.contains(name_) || !gradients[name_].defined()) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "free: no input gradient for '" + name_ + "'");
    }
    torch::NoGradGuard no_grad;
    const at::Tensor next = (delta_ + step_size_ * gradients[name_].sign()).clamp(-epsilon_, epsilon_);
    delta_.copy_((clean_ + next).clamp(0, 1) - clean_);
  }

 private:
  // Replays of one minibatch carry delta unchanged; only a new batch needs the warm-start projection.
  bool same_batch(const at::Tensor& x) const { return last_.defined() && last_.is_same(x); }

  double epsilon_, step_size_;
  int32_t replays_;
  bool reproject_;
  at::Tensor delta_, clean_, last_;
  std::string name_;
};

}  // namespace

CFAMC_PLUGIN("free", "0.1.0", cfamc::component<FreeReplayAttack>())
