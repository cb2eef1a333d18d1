// Square Attack (Andriushchenko et al. 2020), L-inf, as AutoAttack runs it: black-box, so it reads only the
// oracle's logits and labels, never its loss or a gradient. It lowers the margin (true-class logit minus
// the largest other) from a start of vertical +-eps stripes; each iteration sets one random square per
// image to +-eps (one sign per channel) and keeps it only where the margin falls. An image stops being
// queried once its margin is not positive (misclassified); an image misclassified clean comes back unchanged.
#include <cfamc/plugin.hpp>
#include <cfamc/random.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace {

// The reference's p_selection: p_init halved after each of these iterations of a 10,000-query run. With
// `rescale` the iteration is first mapped onto that scale, so a shorter run goes through the whole schedule.
double square_fraction(int64_t iteration, int64_t queries, double p_init, bool rescale) {
  static constexpr int64_t kHalvings[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  const int64_t it = rescale ? iteration * 10000 / queries : iteration;
  double p = p_init;
  for (const int64_t bound : kHalvings) {
    if (it > bound) p /= 2;
  }
  return p;
}

// True-class logit minus the largest other: not positive once the image is misclassified.
at::Tensor margin(const at::Tensor& logits, const at::Tensor& labels) {
  const at::Tensor y = labels.unsqueeze(1);
  const at::Tensor true_logit = logits.gather(1, y).squeeze(1);
  const at::Tensor others = logits.scatter(1, y, -std::numeric_limits<double>::infinity()).amax(1);
  return true_logit - others;
}

at::Tensor per_image(const at::Tensor& mask) { return mask.view({-1, 1, 1, 1}); }

class Square : public cfamc::Attack {
 public:
  static constexpr const char* name = "square";
  static constexpr const char* summary = "Square Attack (AutoAttack's black-box L-inf attack: margin loss, random squares, logits only)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius of the L-inf ball, in pixel units"),
        cfamc::option("queries", CFAMC_OPTION_INT, "5000", "iterations, each one model query per image not yet misclassified"),
        cfamc::option("p_init", CFAMC_OPTION_FLOAT, "0.8", "fraction of the image a square covers at first, in (0, 1]; halved on a schedule"),
        cfamc::option("rescale_schedule", CFAMC_OPTION_BOOL, "true",
                      "halve p on the 10,000-query scale (iteration x 10000 / queries); false: on raw iterations, as AutoAttack's standard run"),
    };
  }

  explicit Square(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        queries_(ctx.integer("queries")),
        p_init_(ctx.real("p_init")),
        rescale_(ctx.flag("rescale_schedule")),
        rng_(register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()))) {
    if (epsilon_ < 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "epsilon must not be negative");
    if (queries_ < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "queries must be positive");
    if (!(p_init_ > 0 && p_init_ <= 1)) throw cfamc::Error(CFAMC_ERROR_OPTION, "p_init must be in (0, 1]");
  }

  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    // Refused here, not at validation: an attack learns which oracle it gets only when it is called.
    if (!oracle.has_logits() || !oracle.labels().defined()) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED,
                         "square is a black-box attack on a classifier and needs an oracle with logits and labels "
                         "(an evaluation attack); this oracle has none (the training oracle has only a loss)");
    }
    if (inputs.size() != 1 || inputs[inputs.keys()[0]].dim() != 4) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "square perturbs one input of images [N, C, H, W]");
    }
    // Black-box: no graph is needed, and none is built even when the model's parameters require grad.
    torch::NoGradGuard no_grad;
    const std::string key = inputs.keys()[0];
    const at::Tensor x = inputs[key].detach();
    const at::Tensor labels = oracle.labels().to(x.device());
    if (labels.dim() != 1 || labels.size(0) != x.size(0)) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "square needs one label per image");
    }
    cfamc::TensorMap out;
    out.insert(key, attack(oracle, key, x, labels));
    return out;
  }

 private:
  at::Tensor margins(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x,
                     const at::Tensor& labels) const {
    cfamc::TensorMap in;
    in.insert(key, x);
    return margin(oracle.logits(in).detach(), labels);
  }

  at::Tensor perturbed(const at::Tensor& x, const at::Tensor& delta) const { return (x + delta).clamp(0, 1); }

  // +-1, one per entry of `shape`, from the component's generator.
  at::Tensor signs(at::IntArrayRef shape, const at::Tensor& like) {
    return torch::randint(0, 2, shape, *rng_->lease(), torch::kFloat).mul_(2).sub_(1).to(like.options());
  }

  at::Tensor attack(const cfamc::Oracle& oracle, const std::string& key, const at::Tensor& x, const at::Tensor& labels) {
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const at::Tensor attacked = margins(oracle, key, x, labels).gt(0);
    // Vertical stripes: one sign per column and channel, the same down each column.
    at::Tensor delta = (epsilon_ * signs({n, c, 1, w}, x)).expand({n, c, h, w}).contiguous();
    at::Tensor best = torch::full({n}, -std::numeric_limits<double>::infinity(), x.options());
    const at::Tensor start = attacked.nonzero().squeeze(1);
    if (start.numel() == 0) return x.clone();  // nothing classified correctly: nothing to query
    best.index_copy_(0, start,
                     margins(oracle, key, perturbed(x.index_select(0, start), delta.index_select(0, start)),
                             labels.index_select(0, start)));
    for (int64_t i = 0; i < queries_; ++i) {
      const at::Tensor active = best.gt(0).nonzero().squeeze(1);
      if (active.numel() == 0) break;
      const double p = square_fraction(i, queries_, p_init_, rescale_);
      const int64_t side = std::clamp<int64_t>(std::llround(std::sqrt(p * h * w)), 1, std::min(h, w));
      const at::Tensor x_a = x.index_select(0, active), delta_a = delta.index_select(0, active);
      const at::Tensor proposal = at::where(square_masks(active.size(0), h, w, side, x),
                                            epsilon_ * signs({active.size(0), c, 1, 1}, x), delta_a);
      const at::Tensor m = margins(oracle, key, perturbed(x_a, proposal), labels.index_select(0, active));
      const at::Tensor best_a = best.index_select(0, active);
      const at::Tensor improved = m.lt(best_a);
      delta.index_copy_(0, active, at::where(per_image(improved), proposal, delta_a));
      best.index_copy_(0, active, at::where(improved, m, best_a));
    }
    return at::where(per_image(attacked), perturbed(x, delta), x).detach();
  }

  // [m, 1, H, W]: true inside one side-by-side square per image, at a uniformly random position.
  at::Tensor square_masks(int64_t m, int64_t h, int64_t w, int64_t side, const at::Tensor& like) {
    const auto generator = rng_->lease();
    const at::Tensor top = torch::randint(0, h - side + 1, {m, 1, 1, 1}, *generator, torch::kLong);
    const at::Tensor left = torch::randint(0, w - side + 1, {m, 1, 1, 1}, *generator, torch::kLong);
    const at::Tensor rows = torch::arange(h, torch::kLong).view({1, 1, h, 1});
    const at::Tensor cols = torch::arange(w, torch::kLong).view({1, 1, 1, w});
    const at::Tensor inside = rows.ge(top) & rows.lt(top + side) & cols.ge(left) & cols.lt(left + side);
    return inside.to(like.device());
  }

  double epsilon_;
  int64_t queries_;
  double p_init_;
  bool rescale_;
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;  // checkpointed with the attack ("rng.state")
};

}  // namespace

CFAMC_PLUGIN("square", "0.1.0", cfamc::component<Square>())
