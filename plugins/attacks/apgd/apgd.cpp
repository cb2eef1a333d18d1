// APGD (Croce & Hein 2020, as AutoAttack runs it), L-inf: step size 2 eps halved at checkpoints where the
// loss oscillates or stalls, momentum 0.75, restarts at the best point. Losses: cross-entropy through the
// oracle's per-sample loss (APGD-CE), the DLR loss on the oracle's logits (untargeted), and targeted DLR
// against each of the top `target_classes` other classes of the clean prediction (APGD-T). With logits,
// a sample keeps the first point that is misclassified; otherwise (an SSL oracle) its highest-loss point.
#include <cfamc/plugin.hpp>
#include <cfamc/random.hpp>

#include <torch/torch.h>

#include <cmath>

namespace {

namespace F = torch::nn::functional;

enum class Loss { cross_entropy, dlr, dlr_targeted };

// DLR: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12); targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12).
at::Tensor dlr(const at::Tensor& logits, const at::Tensor& y, const at::Tensor& target) {
  const at::Tensor sorted = std::get<0>(logits.sort(1));
  const int64_t c = logits.size(1);
  const at::Tensor z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1);
  if (target.defined()) {
    const at::Tensor z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1);
    return -(z_y - z_t) / (sorted.select(1, c - 1) - 0.5 * (sorted.select(1, c - 3) + sorted.select(1, c - 4)) + 1e-12);
  }
  const at::Tensor top_is_y = sorted.select(1, c - 1).eq(z_y);
  const at::Tensor other = at::where(top_is_y, sorted.select(1, c - 2), sorted.select(1, c - 1));
  return -(z_y - other) / (sorted.select(1, c - 1) - sorted.select(1, c - 3) + 1e-12);
}

class APGD : public cfamc::Attack {
 public:
  static constexpr const char* name = "apgd";
  static constexpr const char* summary = "APGD-CE / APGD-DLR / APGD-T (AutoAttack's L-inf APGD, step-size schedule, momentum)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius of the L-inf ball, in pixel units"),
        cfamc::option("steps", CFAMC_OPTION_INT, "100", "iterations per run"),
        cfamc::option("restarts", CFAMC_OPTION_INT, "1", "random restarts (samples already fooled are kept)"),
        cfamc::option("loss", CFAMC_OPTION_STRING, "\"ce\"", "\"ce\" (APGD-CE), \"dlr\", or \"dlr_targeted\" (APGD-T)"),
        cfamc::option("target_classes", CFAMC_OPTION_INT, "9", "APGD-T: runs against the top-k other classes"),
        cfamc::option("rho", CFAMC_OPTION_FLOAT, "0.75", "oscillation threshold of the step-size checkpoints"),
    };
  }

  explicit APGD(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        steps_(ctx.integer("steps")),
        restarts_(ctx.integer("restarts")),
        target_classes_(ctx.integer("target_classes")),
        rho_(ctx.real("rho")),
        rng_(register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()))) {
    const std::string loss = ctx.text("loss");
    if (loss == "ce") loss_ = Loss::cross_entropy;
    else if (loss == "dlr") loss_ = Loss::dlr;
    else if (loss == "dlr_targeted") loss_ = Loss::dlr_targeted;
    else throw cfamc::Error(CFAMC_ERROR_OPTION, "loss must be \"ce\", \"dlr\" or \"dlr_targeted\"");
    if (epsilon_ < 0 || steps_ < 1 || restarts_ < 1 || target_classes_ < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "epsilon must not be negative; steps, restarts, target_classes positive");
    }
  }

  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    if (inputs.size() != 1) throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "apgd perturbs one input");
    if (loss_ != Loss::cross_entropy && (!oracle.has_logits() || !oracle.labels().defined())) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "the DLR losses need a classifier oracle (logits and labels)");
    }
    torch::AutoGradMode grad_mode(true);
    const std::string key = inputs.keys()[0];
    const at::Tensor x = inputs[key].detach();
    const bool classifier = oracle.has_logits() && oracle.labels().defined();
    at::Tensor result = x.clone();
    at::Tensor fooled = torch::zeros({x.size(0)}, x.options().dtype(torch::kBool));
    std::vector<at::Tensor> targets = {at::Tensor()};
    if (loss_ == Loss::dlr_targeted) targets = target_list(oracle, key, x);
    for (const at::Tensor& target : targets) {
      for (int64_t restart = 0; restart < restarts_; ++restart) {
        const at::Tensor adv = run(oracle, key, x, target, classifier);
        if (!classifier) return single(key, adv);  // SSL oracle: no success criterion, keep the best-loss run
        torch::NoGradGuard no_grad;
        const at::Tensor now_fooled = predictions(oracle, key, adv).ne(oracle.labels());
        const at::Tensor take = now_fooled.logical_and(fooled.logical_not());
        result = at::where(expand(take, x), adv, result);
        fooled = fooled.logical_or(now_fooled);
        if (fooled.all().item<bool>()) return single(key, result);
      }
    }
    return single(key, result);
  }

 private:
  static at::Tensor expand(const at::Tensor& mask, const at::Tensor& like) {
    std::vector<int64_t> shape(like.dim(), 1);
    shape[0] = -1;
    return mask.view(shape);
  }
  static cfamc::TensorMap single(const std::string& key, const at::Tensor& x) {
    cfamc::TensorMap out;
    out.insert(key, x.detach());
    return out;
  }
  static cfamc::TensorMap named(const std::string& key, const at::Tensor& x) {
    cfamc::TensorMap m;
    m.insert(key, x);
    return m;
  }
  at::Tensor predictions(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x) const {
    return oracle.logits(named(key, x)).argmax(1);
  }
  // APGD-T's targets: the 2nd, 3rd, ... most likely classes of the clean prediction.
  std::vector<at::Tensor> target_list(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x) const {
    torch::NoGradGuard no_grad;
    const at::Tensor order = oracle.logits(named(key, x)).argsort(1, /*descending=*/true);
    std::vector<at::Tensor> out;
    for (int64_t k = 1; k <= std::min<int64_t>(target_classes_, order.size(1) - 1); ++k) out.push_back(order.select(1, k));
    return out;
  }

  // Per-sample loss and, for classifiers, logits.
  std::pair<at::Tensor, at::Tensor> evaluate(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x,
                                             const at::Tensor& target) const {
    if (loss_ == Loss::cross_entropy) {
      at::Tensor loss = oracle.loss(named(key, x));
      if (loss.dim() != 1) throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "apgd needs a per-sample loss [N] from the oracle");
      return {loss, oracle.has_logits() ? oracle.logits(named(key, x)) : at::Tensor()};
    }
    const at::Tensor logits = oracle.logits(named(key, x));
    return {dlr(logits, oracle.labels(), target), logits};
  }

  // Where a sample is misclassified at x_adv, x_adv becomes its answer: a classifier attack returns a
  // misclassified point when it found one, not merely the highest loss.
  static void keep_fooled(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& x_adv,
                          at::Tensor& x_best_adv) {
    x_best_adv = at::where(expand(logits.argmax(1).ne(labels), x_adv), x_adv, x_best_adv);
  }

  // A random start on the sphere of the L-inf ball, as AutoAttack draws it.
  at::Tensor random_start(const at::Tensor& x) {
    const at::Tensor t = (2 * torch::rand(x.sizes(), *rng_->lease()) - 1).to(x.device());
    return (x + epsilon_ * t / expand(t.flatten(1).abs().amax(1), x)).clamp(0, 1);
  }

  // APGD's step: a signed-gradient step of `step` per sample, then momentum a towards it from x_old, each
  // projected onto the ball around x and onto [0,1].
  at::Tensor momentum_step(const at::Tensor& x, const at::Tensor& x_adv, const at::Tensor& x_old,
                           const at::Tensor& grad, const at::Tensor& step, double a) const {
    torch::NoGradGuard no_grad;
    const at::Tensor lower = x - epsilon_, upper = x + epsilon_;
    const at::Tensor z = torch::min(torch::max(x_adv + expand(step, x) * grad.sign(), lower), upper).clamp(0, 1);
    return torch::min(torch::max(x_adv + (z - x_adv) * a + (x_adv - x_old) * (1 - a), lower), upper).clamp(0, 1);
  }

  at::Tensor run(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x, const at::Tensor& target,
                 bool classifier) {
    const int64_t n = x.size(0);
    const auto per_sample = [&](const at::Tensor& v) { return expand(v, x); };
    at::Tensor x_adv = random_start(x);
    at::Tensor x_best = x_adv.clone(), x_best_adv = x_adv.clone(), x_old = x_adv.clone();
    at::Tensor step = torch::full({n}, 2 * epsilon_, x.options());

    const auto gradient = [&](const at::Tensor& point) {
      const at::Tensor p = point.detach().requires_grad_(true);
      auto [loss, logits] = evaluate(oracle, key, p, target);
      const at::Tensor g = torch::autograd::grad({loss.sum()}, {p})[0];
      return std::make_tuple(g.detach(), loss.detach(), logits.defined() ? logits.detach() : logits);
    };
    auto [grad, loss, logits] = gradient(x_adv);
    at::Tensor grad_best = grad.clone(), loss_best = loss.clone();
    if (classifier) keep_fooled(logits, oracle.labels(), x_adv, x_best_adv);
    // Checkpoints: the first after 22% of the steps, then shorter intervals down to 6%.
    int64_t interval = std::max<int64_t>(static_cast<int64_t>(0.22 * steps_), 1);
    const int64_t min_interval = std::max<int64_t>(static_cast<int64_t>(0.06 * steps_), 1);
    const int64_t decrease = std::max<int64_t>(static_cast<int64_t>(0.03 * steps_), 1);
    int64_t since_check = 0;
    at::Tensor increases = torch::zeros({n}, x.options());  // loss increases since the last checkpoint
    at::Tensor loss_at_check = loss_best.clone();
    at::Tensor reduced_at_check = torch::ones({n}, x.options().dtype(torch::kBool));
    at::Tensor loss_previous = loss.clone();

    for (int64_t i = 0; i < steps_; ++i) {
      const at::Tensor next = momentum_step(x, x_adv, x_old, grad, step, i > 0 ? 0.75 : 1.0);
      x_old = x_adv;
      x_adv = next;
      std::tie(grad, loss, logits) = gradient(x_adv);
      torch::NoGradGuard no_grad;
      if (classifier) keep_fooled(logits, oracle.labels(), x_adv, x_best_adv);
      increases += loss.gt(loss_previous).to(increases.scalar_type());
      loss_previous = loss;
      const at::Tensor improved = loss.gt(loss_best);
      x_best = at::where(per_sample(improved), x_adv, x_best);
      grad_best = at::where(per_sample(improved), grad, grad_best);
      loss_best = at::where(improved, loss, loss_best);
      if (++since_check == interval) {
        // Halve the step where the loss rose in at most rho of the interval's steps, or where the last
        // halving did not help; restart those samples from their best point.
        const at::Tensor oscillating = increases.le(interval * rho_);
        const at::Tensor stalled = reduced_at_check.logical_not().logical_and(loss_at_check.ge(loss_best));
        const at::Tensor halve = oscillating.logical_or(stalled);
        reduced_at_check = halve;
        loss_at_check = loss_best.clone();
        step = at::where(halve, step / 2, step);
        x_adv = at::where(per_sample(halve), x_best, x_adv);
        grad = at::where(per_sample(halve), grad_best, grad);
        increases.zero_();
        since_check = 0;
        interval = std::max(interval - decrease, min_interval);
      }
    }
    return classifier ? x_best_adv : x_best;
  }

  double epsilon_;
  int64_t steps_, restarts_, target_classes_;
  double rho_;
  Loss loss_ = Loss::cross_entropy;
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;  // checkpointed with the attack ("rng.state")
};

}  // namespace

CFAMC_PLUGIN("apgd", "0.1.0", cfamc::component<APGD>())
