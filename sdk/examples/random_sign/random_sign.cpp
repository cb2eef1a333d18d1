// An attack written outside the cfamc tree (docs/plugin-guide.md): x + epsilon * s with a random sign s per
// pixel, clamped to [0,1]. A baseline every real attack should beat.
#include <cfamc/plugin.hpp>
#include <cfamc/random.hpp>
#include <torch/torch.h>

class RandomSign : public cfamc::Attack {
 public:
  static constexpr const char* name = "random_sign";                      // plugin = "random_sign"
  static constexpr const char* summary = "random +-epsilon per pixel (a baseline)";
  static std::vector<cfamc_option_decl> options() {                       // validated by the host
    return {cfamc::option("epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "perturbation size, in pixel units")};
  }

  explicit RandomSign(const cfamc::Context& ctx)
      : Attack(ctx),
        epsilon_(ctx.real("epsilon")),
        // The component's seeded stream, kept in checkpoints ("rng.state"): a resumed run draws the same signs.
        rng_(register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()))) {}

  cfamc::TensorMap perturb(const cfamc::Oracle&, const cfamc::TensorMap& inputs) override {
    cfamc::TensorMap out;
    for (const auto& item : inputs) {
      const at::Tensor& x = item.value();
      const at::Tensor sign = torch::empty(x.sizes()).bernoulli_(0.5, *rng_->lease()).mul_(2).sub_(1);
      out.insert(item.key(), (x + epsilon_ * sign.to(x.device())).clamp(0, 1).detach());
    }
    return out;
  }

 private:
  double epsilon_;
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
};

CFAMC_PLUGIN("random_sign", "1.0.0", cfamc::component<RandomSign>())
