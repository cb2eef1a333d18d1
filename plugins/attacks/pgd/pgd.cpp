// Gradient-sign attacks in pixel space, on inputs in [0,1] with epsilon in pixel units, against the
// oracle the caller supplies: `pgd` (Madry et al. 2018; L-inf or L2, random or zero start, restarts),
// `fgsm` (Goodfellow et al. 2015: one step of size epsilon from the clean input) and `fgsm_rs` (Wong et al.
// 2020: a random start, then one step of 1.25 epsilon). Every step ascends the loss, projects onto the
// ball, then clamps to [0,1]; all named inputs are perturbed together against one loss. `pgd` may instead
// start at x + sigma * N(0,1), as TRADES's inner maximisation does (Zhang et al. 2019: sigma 0.001).
#include <cfamc/plugin.hpp>
#include <cfamc/random.hpp>
#include <cfamc/transfer.hpp>

#include <torch/torch.h>

namespace {

struct AscentSettings {
  double epsilon = 8.0 / 255;
  double step_size = 2.0 / 255;
  int64_t steps = 10;
  int64_t restarts = 1;
  bool linf = true;
  bool random_start = true;
  double normal_start = 0;  // > 0: start at x + normal_start * N(0,1) instead (TRADES)
};

// The shared engine: `restarts` runs of `steps` projected steps. With several restarts and a per-sample
// loss, each sample keeps the run that ended with its highest loss.
class ProjectedAscent {
 public:
  ProjectedAscent(AscentSettings settings, cfamc::CheckpointedGenerator& generator)
      : s_(settings), rng_(generator) {
    if (s_.epsilon < 0 || s_.step_size < 0 || s_.steps < 0 || s_.restarts < 1 || s_.normal_start < 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION,
                         "epsilon, step_size, steps and normal_start must not be negative, restarts positive");
    }
    // Two start distributions asked for at once: refused rather than one silently winning.
    if (s_.normal_start > 0 && s_.random_start) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "normal_start > 0 replaces the uniform start: set random_start = false");
    }
  }

  cfamc::TensorMap run(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) {
    torch::AutoGradMode grad_mode(true);
    std::vector<at::Tensor> originals;
    for (const auto& item : inputs) originals.push_back(item.value().detach());
    std::vector<at::Tensor> best;
    at::Tensor best_loss;
    for (int64_t restart = 0; restart < s_.restarts; ++restart) {
      std::vector<at::Tensor> deltas = attack_once(oracle, inputs.keys(), originals);
      if (s_.restarts == 1) return assemble(inputs.keys(), originals, deltas);
      at::Tensor loss;
      {
        torch::NoGradGuard no_grad;
        loss = oracle.loss(assemble(inputs.keys(), originals, deltas)).detach();
      }
      if (loss.dim() != 1) {
        throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED, "restarts need an oracle with a per-sample loss [N]");
      }
      if (restart == 0) {
        best = deltas;
        best_loss = loss;
        continue;
      }
      const at::Tensor better = loss > best_loss;
      for (size_t i = 0; i < deltas.size(); ++i) {
        std::vector<int64_t> mask_shape(deltas[i].dim(), 1);
        mask_shape[0] = -1;
        best[i] = torch::where(better.view(mask_shape), deltas[i], best[i]);
      }
      best_loss = torch::maximum(loss, best_loss);
    }
    return assemble(inputs.keys(), originals, best);
  }

 private:
  static cfamc::TensorMap assemble(const std::vector<std::string>& names, const std::vector<at::Tensor>& x,
                                   const std::vector<at::Tensor>& deltas) {
    cfamc::TensorMap out;
    for (size_t i = 0; i < names.size(); ++i) out.insert(names[i], (x[i] + deltas[i]).detach());
    return out;
  }

  std::vector<at::Tensor> attack_once(const cfamc::Oracle& oracle, const std::vector<std::string>& names,
                                      const std::vector<at::Tensor>& originals) {
    std::vector<at::Tensor> deltas;
    for (const auto& x : originals) deltas.push_back(initial_delta(x));
    for (int64_t step = 0; step < s_.steps; ++step) {
      cfamc::TensorMap candidate;
      for (size_t i = 0; i < deltas.size(); ++i) {
        deltas[i].requires_grad_(true);
        candidate.insert(names[i], originals[i] + deltas[i]);
      }
      const at::Tensor loss = oracle.loss(candidate).sum();
      const auto grads = torch::autograd::grad({loss}, deltas);
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < deltas.size(); ++i) deltas[i] = ascend(originals[i], deltas[i].detach(), grads[i]);
    }
    for (auto& d : deltas) d = d.detach();
    return deltas;
  }

  at::Tensor initial_delta(const at::Tensor& x) {
    if (s_.normal_start > 0) return normal_delta(x);
    if (!s_.random_start || s_.epsilon == 0) return torch::zeros_like(x);
    at::Tensor delta = torch::empty(x.sizes(), x.options().device(torch::kCPU));
    const auto generator = rng_.lease();
    if (s_.linf) {
      delta.uniform_(-s_.epsilon, s_.epsilon, *generator);
    } else {
      // Uniform direction, radius epsilon * U^(1/d): uniform inside the L2 ball.
      delta.normal_(0, 1, *generator);
      const auto flat = delta.flatten(1);
      const at::Tensor radius = s_.epsilon * torch::rand({x.size(0), 1}, *generator, flat.options()).pow(1.0 / flat.size(1));
      delta = (flat / flat.norm(2, 1, true).clamp_min(1e-12) * radius).view_as(x);
    }
    delta = cfamc::on_device_of(x, delta);
    return (x + delta).clamp(0, 1) - x;
  }

  // TRADES's start, x + sigma * N(0,1). Projected onto the ball as every step is (which changes nothing
  // unless epsilon is within a few sigma), so that an attack never returns a point outside it, even with
  // steps = 0.
  at::Tensor normal_delta(const at::Tensor& x) {
    at::Tensor delta = torch::empty(x.sizes(), x.options().device(torch::kCPU));
    delta.normal_(0, s_.normal_start, *rng_.lease());
    delta = cfamc::on_device_of(x, delta);
    if (s_.linf) {
      delta = delta.clamp(-s_.epsilon, s_.epsilon);
    } else {
      const at::Tensor flat = delta.flatten(1);
      delta = (flat * (s_.epsilon / flat.norm(2, 1, true).clamp_min(1e-12)).clamp_max(1.0)).view_as(x);
    }
    return (x + delta).clamp(0, 1) - x;
  }

  at::Tensor ascend(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& grad) const {
    at::Tensor next;
    if (s_.linf) {
      next = (delta + s_.step_size * grad.sign()).clamp(-s_.epsilon, s_.epsilon);
    } else {
      const auto shape = std::vector<int64_t>{-1, 1};
      const at::Tensor g = grad.flatten(1);
      const at::Tensor step = g / g.norm(2, 1, true).clamp_min(1e-12);
      at::Tensor d = delta.flatten(1) + s_.step_size * step;
      d = d * (s_.epsilon / d.norm(2, 1, true).clamp_min(1e-12)).clamp_max(1.0);
      next = d.view_as(delta);
    }
    return (x + next).clamp(0, 1) - x;
  }

  AscentSettings s_;
  cfamc::CheckpointedGenerator& rng_;  // the component's, checkpointed with it
};

// The attack's random stream, a submodule so that checkpoints keep it ("rng.state").
std::shared_ptr<cfamc::CheckpointedGenerator> random_stream(cfamc::Attack& attack, const cfamc::Context& ctx) {
  return attack.register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()));
}

class PGD : public cfamc::Attack {
 public:
  static constexpr const char* name = "pgd";
  static constexpr const char* summary = "PGD, L-inf or L2, random or zero start, restarts; projection then clamp to [0,1]";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius of the ball, in pixel units"),
        cfamc::option("step_size", CFAMC_OPTION_FLOAT, "\"2/255\"", "step length, in pixel units"),
        cfamc::option("steps", CFAMC_OPTION_INT, "10", "ascent steps; 0 returns the start point"),
        cfamc::option("restarts", CFAMC_OPTION_INT, "1", "independent runs; each sample keeps its strongest (needs a per-sample loss)"),
        cfamc::option("norm", CFAMC_OPTION_STRING, "\"linf\"", "\"linf\" or \"l2\""),
        cfamc::option("random_start", CFAMC_OPTION_BOOL, "true", "start uniformly inside the ball instead of at 0"),
        cfamc::option("normal_start", CFAMC_OPTION_FLOAT, "0",
                      "start at x + normal_start * N(0,1) instead of the uniform start (TRADES: 0.001; needs "
                      "random_start = false); 0: off"),
    };
  }
  explicit PGD(const cfamc::Context& ctx) : Attack(ctx), rng_(random_stream(*this, ctx)), engine_(settings(ctx), *rng_) {}
  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    return engine_.run(oracle, inputs);
  }

 private:
  static AscentSettings settings(const cfamc::Context& ctx) {
    const std::string norm = ctx.text("norm");
    if (norm != "linf" && norm != "l2") throw cfamc::Error(CFAMC_ERROR_OPTION, "norm must be \"linf\" or \"l2\"");
    return {ctx.real("epsilon"), ctx.real("step_size"), ctx.integer("steps"), ctx.integer("restarts"), norm == "linf",
            ctx.flag("random_start"), ctx.real("normal_start")};
  }
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
  ProjectedAscent engine_;
};

class FGSM : public cfamc::Attack {
 public:
  static constexpr const char* name = "fgsm";
  static constexpr const char* summary = "FGSM: one L-inf step of size epsilon from the clean input";
  static std::vector<cfamc_option_decl> options() {
    return {cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "step and radius, in pixel units")};
  }
  explicit FGSM(const cfamc::Context& ctx)
      : Attack(ctx),
        rng_(random_stream(*this, ctx)),
        engine_({ctx.real("epsilon"), ctx.real("epsilon"), 1, 1, true, false}, *rng_) {}
  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    return engine_.run(oracle, inputs);
  }

 private:
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
  ProjectedAscent engine_;
};

class FGSMRandomStart : public cfamc::Attack {
 public:
  static constexpr const char* name = "fgsm_rs";
  static constexpr const char* summary = "FGSM with a random start (Wong et al. 2020): U(-eps, eps), then one step";
  static std::vector<cfamc_option_decl> options() {
    return {cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius, in pixel units"),
            cfamc::option("step_ratio", CFAMC_OPTION_FLOAT, "1.25", "the step, as a multiple of epsilon")};
  }
  explicit FGSMRandomStart(const cfamc::Context& ctx)
      : Attack(ctx),
        rng_(random_stream(*this, ctx)),
        engine_({ctx.real("epsilon"), ctx.real("epsilon") * ctx.real("step_ratio"), 1, 1, true, true}, *rng_) {}
  cfamc::TensorMap perturb(const cfamc::Oracle& oracle, const cfamc::TensorMap& inputs) override {
    return engine_.run(oracle, inputs);
  }

 private:
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
  ProjectedAscent engine_;
};

}  // namespace

CFAMC_PLUGIN("pgd", "0.2.0", cfamc::component<PGD>(), cfamc::component<FGSM>(), cfamc::component<FGSMRandomStart>())
