// SimCLR (Chen et al. 2020) as the CF-AMC-SSL paper uses it: a projection head on the backbone feature
// and the NT-Xent loss over V views of each image. Robust variant: the attack perturbs the second view,
// maximising NT-Xent(f(x2), f(x2 + delta)); training then contrasts x1 with x2 + delta.
#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cmath>

namespace {

using cfamc::nt_xent;

class SimCLR : public cfamc::Objective {
 public:
  static constexpr const char* name = "simclr";
  static constexpr const char* summary = "SimCLR: projection head + NT-Xent over V views; robust: perturbs view 2";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("group", CFAMC_OPTION_STRING, "\"views\"", "the view group of the run file to consume"),
        cfamc::option("num_views", CFAMC_OPTION_INT, "2", "views per image in that group (at least 2)"),
        cfamc::option("temperature", CFAMC_OPTION_FLOAT, "0.5", "NT-Xent temperature (CF-AMC-SSL uses 0.07)"),
        cfamc::option("hidden_dim", CFAMC_OPTION_INT, "512", "hidden width of the projection MLP"),
        cfamc::option("projection_dim", CFAMC_OPTION_INT, "128", "output width of the projection MLP"),
    };
  }

  explicit SimCLR(const cfamc::Context& ctx)
      : Objective(ctx),
        group_(ctx.text("group")),
        views_(ctx.integer("num_views")),
        temperature_(ctx.real("temperature")) {
    const int64_t hidden = ctx.integer("hidden_dim"), out = ctx.integer("projection_dim");
    if (views_ < 2) throw cfamc::Error(CFAMC_ERROR_OPTION, "num_views must be at least 2");
    if (temperature_ <= 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "temperature must be positive");
    if (ctx.feature_dim() < 1 || hidden < 1 || out < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "hidden_dim, projection_dim and the backbone feature dim must be positive");
    }
    projector_ = register_module("projector", torch::nn::Sequential(torch::nn::Linear(ctx.feature_dim(), hidden),
                                                                    cfamc::BatchNorm(hidden), torch::nn::ReLU(),
                                                                    torch::nn::Linear(hidden, out)));
    cfamc::initialise_linear_layers(*this, ctx.generator());
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override { return {"view2"}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor&) override {
    return cfamc::split_views(views, group_, views_, "simclr");
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase phase, cfamc::TensorMap& log) override {
    std::vector<at::Tensor> batch;
    if (phase == CFAMC_PHASE_ATTACK) {
      batch = {clean["view2"], adversarial["view2"]};
    } else {
      for (int64_t v = 1; v <= views_; ++v) {
        const std::string key = "view" + std::to_string(v);
        batch.push_back(adversarial.contains(key) ? adversarial[key] : clean[key]);
      }
    }
    const int64_t views = static_cast<int64_t>(batch.size());
    // The global batch's negatives: every process gathers all processes' embeddings (view-major).
    const at::Tensor local = cfamc::unit_rows(projector_->forward(encoder(torch::cat(batch, 0))));
    const at::Tensor z = cfamc::all_gather_views(local, views);
    at::Tensor value = nt_xent(z, views, temperature_);
    log.insert("nt_xent", value.detach());
    return value;
  }

 private:
  std::string group_;
  int64_t views_;
  double temperature_;
  torch::nn::Sequential projector_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("simclr", "0.1.0", cfamc::component<SimCLR>())
