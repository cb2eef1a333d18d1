// FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
// attack"), L-inf, targeted, as AutoAttack's standard version runs it. A minimal-norm attack: each step
// linearises the boundary between the true class and one target class (the gradient of their logit
// difference, through the oracle's logits), projects both the current point and the clean point onto that
// hyperplane inside the box [0,1], and moves to a convex combination of the two projections, extrapolated
// by eta and biased towards the clean point by at most alpha_max. A point that became misclassified is
// pulled back towards the clean image by beta, and the smallest such perturbation is kept. One run per
// target (the 2nd, 3rd, ... largest clean logits), each on the points not yet broken; a point is broken
// when its perturbation's L-inf norm is at most epsilon, and only broken points come back changed.
#include <cfamc/plugin.hpp>
#include <cfamc/random.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// [N, 1, ..., 1]: one value per image, broadcast over images shaped like `like`.
at::Tensor per_image(const at::Tensor& values, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = -1;
  return values.view(shape);
}

at::Tensor linf_norm(const at::Tensor& delta) { return delta.flatten(1).abs().amax(1); }

// The reference's bisection: for each row, the position k (among the coordinates' rooms in descending
// order) of the last kink of the piecewise linear change(lambda) that still lies above `needed`; the
// answer's lambda sits on the segment after it. ceil(log2(D)) halvings, as the reference does.
at::Tensor last_kink_above(const at::Tensor& needed, const at::Tensor& capped_change, const at::Tensor& capped_weight,
                           const at::Tensor& room, const at::Tensor& descending) {
  const int64_t rows = room.size(0), dims = room.size(1);
  const auto index_options = room.options().dtype(torch::kLong);
  at::Tensor lower = torch::zeros({rows}, index_options);
  at::Tensor upper = torch::full({rows}, dims - 1, index_options);
  int64_t halvings = 0;
  while ((int64_t{1} << halvings) < dims) ++halvings;
  for (int64_t i = 0; i < halvings; ++i) {
    const at::Tensor middle = at::div(lower + upper, 2, "floor");
    const at::Tensor k = middle.unsqueeze(1);
    const at::Tensor lambda = room.gather(1, descending.gather(1, k));
    const at::Tensor change = (capped_change.gather(1, k) - capped_weight.gather(1, k) * lambda).squeeze(1);
    const at::Tensor above = needed > change;
    lower = at::where(above, middle, lower);
    upper = at::where(above, upper, middle);
  }
  return lower;
}

// The reference's projection_linf, per row: the step d of least L-inf norm with w.(t + d) = b and t + d in
// [0,1]; where the box cannot reach the hyperplane, the move to the box corner nearest to it. With w's sign
// chosen so that the hyperplane lies below w.t, a step of norm lambda lowers w.x by at most
// sum_i |w_i| min(lambda, room_i), room_i being how far coordinate i can go towards that corner: piecewise
// linear in lambda with kinks at the rooms, so the answer is found on the segment that meets b.
at::Tensor project_linf(const at::Tensor& t, at::Tensor w, at::Tensor b) {
  const at::Tensor side = ((w * t).sum(1) - b).ge(0).to(w.scalar_type()).mul(2).sub(1);
  w = w * side.unsqueeze(1);
  b = b * side;
  const at::Tensor upward = w.lt(0).to(w.scalar_type());  // coordinates whose corner is 1
  const at::Tensor used = w.ne(0).to(w.scalar_type());
  const at::Tensor corner = (upward - t) * used;
  const at::Tensor room = upward - t * (2 * upward - 1);
  const at::Tensor ascending = room.argsort(/*dim=*/1, /*descending=*/false);
  const at::Tensor descending = ascending.flip({1});
  const at::Tensor needed = b - (w * t).sum(1);      // the change of w.x that reaches the hyperplane, <= 0
  const at::Tensor reachable = (w * corner).sum(1);  // the largest change the box allows
  const at::Tensor w_sorted = w.gather(1, descending);
  // With the k+1 largest rooms capped at lambda: change(lambda) = capped_change[k] - capped_weight[k] * lambda.
  const at::Tensor capped_weight = w_sorted.abs().cumsum(1);
  const at::Tensor capped_change = (-w_sorted * corner.gather(1, descending)).cumsum(1) + reachable.unsqueeze(1);
  const at::Tensor all_change = capped_change.select(1, -1), all_weight = capped_weight.select(1, -1);
  const at::Tensor smallest_room = room.gather(1, ascending.narrow(1, 0, 1)).squeeze(1);
  // Below the smallest room every coordinate moves by the same lambda.
  const at::Tensor uniform_case = needed > all_change - all_weight * smallest_room;
  const at::Tensor segment_case = (needed > reachable) & uniform_case.logical_not();
  const at::Tensor k = last_kink_above(needed, capped_change, capped_weight, room, descending).unsqueeze(1);
  const at::Tensor lambda_uniform = ((needed - all_change) / -all_weight).clamp_min(0).unsqueeze(1);
  const at::Tensor lambda_segment =
      ((needed - capped_change.gather(1, k).squeeze(1)) / -capped_weight.gather(1, k).squeeze(1)).clamp_min(0).unsqueeze(1);
  const at::Tensor uniform = (2 * upward - 1) * lambda_uniform;
  const at::Tensor capped = at::min(lambda_segment, corner) * upward + at::max(-lambda_segment, corner) * (1 - upward);
  // Rows in neither case cannot reach the hyperplane inside the box: they go to the corner. The divisions
  // above may be 0/0 on rows of the other cases; where() drops those.
  const at::Tensor d = at::where(uniform_case.unsqueeze(1), uniform, at::where(segment_case.unsqueeze(1), capped, corner));
  return d * used;
}

// The classifier behind the oracle, on the one attacked input.
struct Model {
  const cfamc::Oracle& oracle;
  std::string key;

  at::Tensor logits(const at::Tensor& x) const {
    cfamc::TensorMap in;
    in.insert(key, x);
    return oracle.logits(in);
  }

  // z_target - z_true at x and its gradient in x: the boundary between the two classes, linearised at x.
  std::pair<at::Tensor, at::Tensor> margin_and_gradient(const at::Tensor& x, const at::Tensor& labels,
                                                        const at::Tensor& target) const {
    torch::AutoGradMode grad_mode(true);
    const at::Tensor p = x.detach().requires_grad_(true);
    const at::Tensor z = logits(p);
    if (!z.requires_grad()) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED,
                         "fab needs the gradient of the oracle's logits in its inputs; these logits carry no graph");
    }
    const at::Tensor margin = z.gather(1, target.unsqueeze(1)).squeeze(1) - z.gather(1, labels.unsqueeze(1)).squeeze(1);
    const at::Tensor gradient = torch::autograd::grad({margin.sum()}, {p})[0];
    return {margin.detach(), gradient.detach()};
  }
};

class FAB : public cfamc::Attack {
 public:
  static constexpr const char* name = "fab";
  static constexpr const char* summary =
      "FAB-T (AutoAttack's targeted L-inf minimal-norm boundary attack: logits and their input gradient)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"",
                      "radius of the L-inf ball, in pixel units: a point is broken by a misclassified point this close"),
        cfamc::option("iterations", CFAMC_OPTION_INT, "100", "steps of each run"),
        cfamc::option("restarts", CFAMC_OPTION_INT, "1",
                      "runs per target class; each after the first starts at random, half the radius away"),
        cfamc::option("targets", CFAMC_OPTION_INT, "9",
                      "target classes, one run each: the 2nd, 3rd, ... largest clean logits (at most classes - 1)"),
        cfamc::option("alpha_max", CFAMC_OPTION_FLOAT, "0.1", "largest weight of the projection of the clean point, in [0, 1]"),
        cfamc::option("eta", CFAMC_OPTION_FLOAT, "1.05", "extrapolation of each projection step past the linearised boundary, > 0"),
        cfamc::option("beta", CFAMC_OPTION_FLOAT, "0.9",
                      "a misclassified point is pulled back to this fraction of its perturbation, in (0, 1]"),
    };
  }

  explicit FAB(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        iterations_(ctx.integer("iterations")),
        restarts_(ctx.integer("restarts")),
        targets_(ctx.integer("targets")),
        alpha_max_(ctx.real("alpha_max")),
        eta_(ctx.real("eta")),
        beta_(ctx.real("beta")),
        rng_(register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()))) {
    const auto refuse = [](const std::string& why) { throw cfamc::Error(CFAMC_ERROR_OPTION, why); };
    if (epsilon_ < 0) refuse("epsilon must not be negative");
    if (iterations_ < 1) refuse("iterations must be positive");
    if (restarts_ < 1) refuse("restarts must be positive");
    if (targets_ < 1) refuse("targets must be positive");
    if (!(alpha_max_ >= 0 && alpha_max_ <= 1)) refuse("alpha_max must be in [0, 1]");
    if (!(eta_ > 0)) refuse("eta must be positive");
    if (!(beta_ > 0 && beta_ <= 1)) refuse("beta must be in (0, 1]");
  }

  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    // Refused here, not at validation: an attack learns which oracle it gets only when it is called.
    if (!oracle.has_logits() || !oracle.labels().defined()) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED,
                         "fab is a boundary attack on a classifier and needs an oracle with logits and labels "
                         "(an evaluation attack); this oracle has none (the training oracle has only a loss)");
    }
    if (inputs.size() != 1 || inputs[inputs.keys()[0]].dim() < 2) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "fab perturbs one input, a batch [N, ...]");
    }
    const std::string key = inputs.keys()[0];
    const at::Tensor x = inputs[key].detach();
    const at::Tensor labels = oracle.labels().to(x.device());
    if (labels.dim() != 1 || labels.size(0) != x.size(0)) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "fab needs one label per image");
    }
    cfamc::TensorMap out;
    out.insert(key, attack(Model{oracle, key}, x, labels).detach());
    return out;
  }

 private:
  // The reference's perturb for the targeted version: targets in turn, restarts within a target, each run
  // on the points still robust. A point is broken, and takes the run's point, only where that point is
  // misclassified within epsilon; every other point, misclassified clean ones included, stays clean.
  at::Tensor attack(const Model& model, const at::Tensor& x, const at::Tensor& labels) {
    torch::NoGradGuard no_grad;
    const at::Tensor clean_logits = model.logits(x);
    at::Tensor robust = clean_logits.argmax(1).eq(labels);
    at::Tensor adversarial = x.clone();
    at::Tensor best_norm = torch::full({x.size(0)}, kInfinity, x.options());
    const at::Tensor ranked = clean_logits.argsort(1, /*descending=*/true);
    // The reference indexes past the classes when asked for more targets than there are; here it stops.
    const int64_t targets = std::min<int64_t>(targets_, ranked.size(1) - 1);
    for (int64_t k = 1; k <= targets; ++k) {
      for (int64_t restart = 0; restart < restarts_; ++restart) {
        const at::Tensor idx = robust.nonzero().squeeze(1);
        if (idx.numel() == 0) return adversarial;
        const at::Tensor x_i = x.index_select(0, idx), y_i = labels.index_select(0, idx);
        const at::Tensor best_i = best_norm.index_select(0, idx);
        const at::Tensor start = restart == 0 ? x_i : random_start(x_i, best_i);
        auto [found, norm] = run(model, x_i, y_i, ranked.select(1, k).index_select(0, idx), start);
        best_norm.index_copy_(0, idx, at::min(best_i, norm));
        const at::Tensor broken = model.logits(found).argmax(1).ne(y_i) & linf_norm(found - x_i).le(epsilon_);
        const at::Tensor hit = broken.nonzero().squeeze(1);
        adversarial.index_copy_(0, idx.index_select(0, hit), found.index_select(0, hit));
        robust.index_fill_(0, idx.index_select(0, hit), false);
      }
    }
    return adversarial;
  }

  // The reference's random start: uniform noise scaled to L-inf norm min(best norm so far, epsilon) / 2. A
  // point still attacked has no success within epsilon, so in practice the radius is epsilon / 2.
  at::Tensor random_start(const at::Tensor& x, const at::Tensor& best_norm) {
    const at::Tensor t = (2 * torch::rand(x.sizes(), *rng_->lease()) - 1).to(x.options());
    const at::Tensor radius = best_norm.clamp_max(epsilon_) * 0.5;
    return (x + per_image(radius / linf_norm(t), x) * t).clamp(0, 1);
  }

  // One run of the reference's attack_single_run_targeted from `x1`: for each point the smallest
  // perturbation found that misclassifies it and that perturbation's L-inf norm (the clean point and
  // infinity where none did).
  std::pair<at::Tensor, at::Tensor> run(const Model& model, const at::Tensor& x0, const at::Tensor& labels,
                                        const at::Tensor& target, at::Tensor x1) const {
    at::Tensor best = x0.clone();
    at::Tensor best_norm = torch::full({x0.size(0)}, kInfinity, x0.options());
    for (int64_t i = 0; i < iterations_; ++i) {
      x1 = step(model, x0, x1, labels, target);
      // Success is any misclassification, not only the target class, as in the reference.
      const at::Tensor fooled = model.logits(x1).argmax(1).ne(labels);
      const at::Tensor smaller = fooled & linf_norm(x1 - x0).lt(best_norm);
      best = at::where(per_image(smaller, x0), x1, best);
      best_norm = at::where(smaller, linf_norm(x1 - x0), best_norm);
      // Back towards the clean point, to search for a smaller perturbation from the other side.
      x1 = at::where(per_image(fooled, x0), x0 + (x1 - x0) * beta_, x1);
    }
    return {best, best_norm};
  }

  // One FAB step: project the current point and the clean point onto the linearised boundary between the
  // true and the target class, then combine the two eta-extrapolated projections, leaning towards the
  // clean point's by the ratio of their lengths (at most alpha_max) so the perturbation stays small.
  at::Tensor step(const Model& model, const at::Tensor& x0, const at::Tensor& x1, const at::Tensor& labels,
                  const at::Tensor& target) const {
    const int64_t m = x0.size(0);
    auto [margin, gradient] = model.margin_and_gradient(x1, labels, target);
    const at::Tensor w = gradient.flatten(1).to(x1.scalar_type());
    const at::Tensor b = (w * x1.flatten(1)).sum(1) - margin.to(x1.scalar_type());
    const at::Tensor d = project_linf(at::cat({x1.flatten(1), x0.flatten(1)}), at::cat({w, w}), at::cat({b, b}));
    const at::Tensor lengths = d.abs().amax(1).clamp_min(1e-8);
    const at::Tensor from_current = lengths.narrow(0, 0, m), from_clean = lengths.narrow(0, m, m);
    const at::Tensor alpha = per_image((from_current / (from_current + from_clean)).clamp(0, alpha_max_), x0);
    const at::Tensor d1 = d.narrow(0, 0, m).reshape_as(x1), d2 = d.narrow(0, m, m).reshape_as(x0);
    return ((x1 + eta_ * d1) * (1 - alpha) + (x0 + eta_ * d2) * alpha).clamp(0, 1);
  }

  double epsilon_;
  int64_t iterations_, restarts_, targets_;
  double alpha_max_, eta_, beta_;
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;  // checkpointed with the attack ("rng.state")
};

}  // namespace

CFAMC_PLUGIN("fab", "0.1.0", cfamc::component<FAB>())
