// Projected gradient descent (Madry et al. 2018) in pixel space: L-infinity or L2 ball of radius
// `epsilon` around inputs in [0,1]; each step ascends the oracle's loss, projects onto the ball, then
// clamps to [0,1]. All named inputs are perturbed together against one loss.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

namespace {

class PGD : public cfamc::Attack {
 public:
  static constexpr const char* name = "pgd";
  static constexpr const char* summary = "PGD, L-inf or L2, random or zero start, projection then clamp to [0,1]";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius of the ball, in pixel units"),
        cfamc::option("step_size", CFAMC_OPTION_FLOAT, "\"2/255\"", "step length, in pixel units"),
        cfamc::option("steps", CFAMC_OPTION_INT, "10", "ascent steps; 0 returns the inputs unchanged"),
        cfamc::option("norm", CFAMC_OPTION_STRING, "\"linf\"", "\"linf\" or \"l2\""),
        cfamc::option("random_start", CFAMC_OPTION_BOOL, "true", "start uniformly inside the ball instead of at 0"),
    };
  }

  explicit PGD(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        step_size_(ctx.real("step_size")),
        steps_(ctx.integer("steps")),
        linf_(ctx.text("norm") == "linf"),
        random_start_(ctx.flag("random_start")),
        generator_(ctx.generator()) {
    if (!linf_ && ctx.text("norm") != "l2") throw cfamc::Error(CFAMC_ERROR_OPTION, "norm must be \"linf\" or \"l2\"");
    if (epsilon_ < 0 || step_size_ < 0 || steps_ < 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "epsilon, step_size and steps must not be negative");
    }
  }

  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    torch::AutoGradMode grad_mode(true);
    std::vector<at::Tensor> originals, deltas;
    for (const auto& item : inputs) {
      originals.push_back(item.value().detach());
      deltas.push_back(initial_delta(originals.back()));
    }
    for (int64_t step = 0; step < steps_; ++step) {
      cfamc::TensorMap candidate;
      for (size_t i = 0; i < deltas.size(); ++i) {
        deltas[i].requires_grad_(true);
        candidate.insert(inputs.keys()[i], originals[i] + deltas[i]);
      }
      const at::Tensor loss = oracle.loss(candidate).sum();
      const auto grads = torch::autograd::grad({loss}, deltas);
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < deltas.size(); ++i) deltas[i] = ascend(originals[i], deltas[i].detach(), grads[i]);
    }
    cfamc::TensorMap adversarial;
    for (size_t i = 0; i < deltas.size(); ++i) {
      adversarial.insert(inputs.keys()[i], (originals[i] + deltas[i]).detach());
    }
    return adversarial;
  }

 private:
  at::Tensor initial_delta(const at::Tensor& x) {
    if (!random_start_ || epsilon_ == 0) return torch::zeros_like(x);
    at::Tensor delta = torch::empty(x.sizes(), x.options().device(torch::kCPU));
    if (linf_) {
      delta.uniform_(-epsilon_, epsilon_, generator_);
    } else {
      // Uniform direction, radius epsilon * U^(1/d): uniform inside the L2 ball.
      delta.normal_(0, 1, generator_);
      const auto flat = delta.flatten(1);
      const at::Tensor radius = epsilon_ * torch::rand({x.size(0), 1}, generator_, flat.options()).pow(1.0 / flat.size(1));
      delta = (flat / flat.norm(2, 1, true).clamp_min(1e-12) * radius).view_as(x);
    }
    delta = delta.to(x.device());
    return (x + delta).clamp(0, 1) - x;
  }

  at::Tensor ascend(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& grad) const {
    at::Tensor next;
    if (linf_) {
      next = (delta + step_size_ * grad.sign()).clamp(-epsilon_, epsilon_);
    } else {
      const auto shape = std::vector<int64_t>{-1, 1};
      const at::Tensor g = grad.flatten(1);
      const at::Tensor step = g / g.norm(2, 1, true).clamp_min(1e-12);
      at::Tensor d = delta.flatten(1) + step_size_ * step;
      d = d * (epsilon_ / d.norm(2, 1, true).clamp_min(1e-12)).clamp_max(1.0);
      next = d.view_as(delta);
    }
    return (x + next).clamp(0, 1) - x;
  }

  double epsilon_;
  double step_size_;
  int64_t steps_;
  bool linf_;
  bool random_start_;
  at::Generator generator_;
};

}  // namespace

CFAMC_PLUGIN("pgd", "0.1.0", cfamc::component<PGD>())
