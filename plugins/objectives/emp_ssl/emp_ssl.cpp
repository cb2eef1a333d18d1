// EMP-SSL (Tong et al. 2023): many crops per image; the loss rewards a large total coding rate of each
// crop's embeddings and the agreement of every crop's embedding with the mean over crops. Its robust
// variants (Ghofrani & Jamshidi 2025, CF-AMC-SSL) attack all crops against the same loss.
#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include "coding_rate.hpp"

namespace {

using cfamc::emp_ssl::invariance;
using cfamc::emp_ssl::total_coding_rate;

class EmpSsl : public cfamc::Objective {
 public:
  static constexpr const char* name = "emp_ssl";
  static constexpr const char* summary = "EMP-SSL: total coding rate + multi-crop invariance; robust: attacks all crops";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("group", CFAMC_OPTION_STRING, "\"crops\"", "the view group of the run file to consume"),
        cfamc::option("num_crops", CFAMC_OPTION_INT, "16", "crops per image in that group ([views.<group>] count)"),
        cfamc::option("pre_feature_dim", CFAMC_OPTION_INT, "4096", "width of the pre-feature head (the representation)"),
        cfamc::option("hidden_dim", CFAMC_OPTION_INT, "4096", "hidden width of the projection head"),
        cfamc::option("projection_dim", CFAMC_OPTION_INT, "1024", "embedding dimension d"),
        cfamc::option("eps", CFAMC_OPTION_FLOAT, "0.2", "coding-rate precision (the reference code's eps)"),
        cfamc::option("invariance_weight", CFAMC_OPTION_FLOAT, "200", "weight of -D"),
        cfamc::option("tcr_weight", CFAMC_OPTION_FLOAT, "1", "weight of -mean R(Z_i)"),
    };
  }

  explicit EmpSsl(const cfamc::Context& ctx)
      : Objective(ctx),
        group_(ctx.text("group")),
        crops_(ctx.integer("num_crops")),
        pre_dim_(ctx.integer("pre_feature_dim")),
        eps_(ctx.real("eps")),
        invariance_weight_(ctx.real("invariance_weight")),
        tcr_weight_(ctx.real("tcr_weight")) {
    const int64_t hidden = ctx.integer("hidden_dim"), out = ctx.integer("projection_dim");
    if (crops_ < 2) throw cfamc::Error(CFAMC_ERROR_OPTION, "num_crops must be at least 2");
    if (eps_ <= 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "eps must be positive");
    if (pre_dim_ < 1 || hidden < 1 || out < 1 || ctx.feature_dim() < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "head widths and the backbone feature dim must be positive");
    }
    pre_feature_ = register_module("pre_feature", torch::nn::Sequential(torch::nn::Linear(ctx.feature_dim(), pre_dim_),
                                                                        cfamc::BatchNorm(pre_dim_), torch::nn::ReLU()));
    projection_ = register_module("projection", torch::nn::Sequential(torch::nn::Linear(pre_dim_, hidden),
                                                                      cfamc::BatchNorm(hidden), torch::nn::ReLU(),
                                                                      torch::nn::Linear(hidden, out)));
    cfamc::initialise_linear_layers(*this, ctx.generator());
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override { return {"crops"}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor& sample_indices) override {
    const at::Tensor& crops = views[group_];
    if (sample_indices.defined() && crops.size(0) != crops_ * sample_indices.size(0)) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "emp_ssl: group '" + group_ + "' holds " + std::to_string(crops.size(0)) + " crops for " +
                             std::to_string(sample_indices.size(0)) + " images, not num_crops = " + std::to_string(crops_) +
                             " each; set [views." + group_ + "] count and objective.num_crops alike");
    }
    cfamc::TensorMap inputs;
    inputs.insert("crops", crops);
    return inputs;
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase, cfamc::TensorMap& log) override {
    const at::Tensor& x = adversarial.contains("crops") ? adversarial["crops"] : clean["crops"];
    // The coding rate's covariance and the crops' mean need the whole batch: in a data-parallel run every
    // process gathers all processes' crops (view-major, differentiable) and computes the global loss.
    const at::Tensor z = cfamc::all_gather_views(
        cfamc::unit_rows(projection_->forward(pre_feature_->forward(encoder(x)))), crops_);
    const at::Tensor per_crop = z.view({crops_, -1, z.size(1)});
    const at::Tensor tcr = total_coding_rate(per_crop, eps_).mean();
    const at::Tensor agreement = invariance(per_crop);
    log.insert("tcr", tcr.detach());
    log.insert("invariance", agreement.detach());
    return -invariance_weight_ * agreement - tcr_weight_ * tcr;
  }

  bool has_representation() const override { return true; }
  at::Tensor represent(const at::Tensor& features) override { return pre_feature_->forward(features); }
  int64_t representation_dim(int64_t) const override { return pre_dim_; }

 private:
  std::string group_;
  int64_t crops_, pre_dim_;
  double eps_, invariance_weight_, tcr_weight_;
  torch::nn::Sequential pre_feature_{nullptr}, projection_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("emp_ssl", "0.1.0", cfamc::component<EmpSsl>())
