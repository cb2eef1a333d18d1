// RoCL, Robust Contrastive Learning (Kim et al. NeurIPS 2020, "Adversarial Self-Supervised Contrastive
// Learning"): two views of each image; the attack perturbs view 1 only, maximising NT-Xent(adv(v1), v2)
// (instance-wise attack); training minimises NT-Xent over the three views (v1, v2, adv), where every view
// of an image is a positive of the others, plus a small term NT-Xent(adv, v2) weighted 1/256. As the reference
// code computes it, the three-view term sums each row's two positive terms (NT-Xent averages them: twice ours).
#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <string>
#include <vector>

namespace {

class Rocl : public cfamc::Objective {
 public:
  static constexpr const char* name = "rocl";
  static constexpr const char* summary =
      "RoCL: attack perturbs view 1 against view 2; NT-Xent over (v1, v2, adv) + 1/256 NT-Xent(adv, v2)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("group", CFAMC_OPTION_STRING, "\"views\"", "the view group of the run file to consume (2 views)"),
        cfamc::option("temperature", CFAMC_OPTION_FLOAT, "0.5", "NT-Xent temperature (RoCL: 0.5)"),
        cfamc::option("hidden_dim", CFAMC_OPTION_INT, "2048", "hidden width of the projector (RoCL: 2048)"),
        cfamc::option("projection_dim", CFAMC_OPTION_INT, "128", "output width of the projector (RoCL: 128)"),
        cfamc::option("adversarial_pair_weight", CFAMC_OPTION_FLOAT, "0.00390625",
                      "weight of NT-Xent(adv, v2) in the training loss (RoCL: 1/256)"),
        cfamc::option("reference_detached_similarity", CFAMC_OPTION_BOOL, "false",
                      "the reference code's accident: no gradient through the second factor of z z^T in every "
                      "NT-Xent (attack and training)"),
    };
  }

  explicit Rocl(const cfamc::Context& ctx)
      : Objective(ctx),
        group_(ctx.text("group")),
        temperature_(ctx.real("temperature")),
        pair_weight_(ctx.real("adversarial_pair_weight")),
        detached_similarity_(ctx.flag("reference_detached_similarity")) {
    const int64_t hidden = ctx.integer("hidden_dim"), out = ctx.integer("projection_dim");
    if (temperature_ <= 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "temperature must be positive");
    if (pair_weight_ < 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "adversarial_pair_weight must not be negative");
    if (ctx.feature_dim() < 1 || hidden < 1 || out < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "hidden_dim, projection_dim and the backbone feature dim must be positive");
    }
    // RoCL's projector has no BatchNorm: Linear, ReLU, Linear.
    projector_ = register_module("projector", torch::nn::Sequential(torch::nn::Linear(ctx.feature_dim(), hidden),
                                                                    torch::nn::ReLU(), torch::nn::Linear(hidden, out)));
    cfamc::initialise_linear_layers(*this, ctx.generator());
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override { return {"view1"}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor&) override {
    return cfamc::split_views(views, group_, 2, "rocl");
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase phase, cfamc::TensorMap& log) override {
    const bool attacked = adversarial.contains("view1");
    if (phase == CFAMC_PHASE_ATTACK) {
      // The instance-wise attack: push adv(v1) away from v2, the other view of the same image.
      const at::Tensor value =
          nt_xent(embed(encoder, {attacked ? adversarial["view1"] : clean["view1"], clean["view2"]}), 2);
      log.insert("nt_xent_attack", value.detach());
      return value;
    }
    if (!attacked) {  // clean training (no attack yet, or none configured): plain SimCLR on (v1, v2)
      const at::Tensor value = nt_xent(embed(encoder, {clean["view1"], clean["view2"]}), 2);
      log.insert("nt_xent", value.detach());
      return value;
    }
    // One forward of the three views: the (adv, v2) term reuses their rows of the same embedding, so the
    // BatchNorm statistics are those of the whole 3B batch and are updated once per step.
    const at::Tensor z = embed(encoder, {clean["view1"], clean["view2"], adversarial["view1"]});
    const int64_t batch = z.size(0) / 3;  // the global batch
    // Summed over a row's two positives, as the reference's loss is: 2 x the averaged NT-Xent.
    const at::Tensor three_views = 2 * nt_xent(z, 3);
    const at::Tensor adversarial_pair =
        nt_xent(torch::cat({z.slice(0, 2 * batch, 3 * batch), z.slice(0, batch, 2 * batch)}, 0), 2);
    log.insert("nt_xent", three_views.detach());
    log.insert("nt_xent_adv_v2", adversarial_pair.detach());
    return three_views + pair_weight_ * adversarial_pair;
  }

 private:
  // L2-normalised projections of the views, concatenated view-major, of the global batch: every process
  // gathers all processes' embeddings, so that every NT-Xent has the global batch's negatives.
  at::Tensor embed(const cfamc::Encoder& encoder, const std::vector<at::Tensor>& views) {
    const int64_t count = static_cast<int64_t>(views.size());
    return cfamc::all_gather_views(cfamc::unit_rows(projector_->forward(encoder(torch::cat(views, 0)))), count);
  }

  at::Tensor nt_xent(const at::Tensor& z, int64_t views) const {
    return cfamc::nt_xent(z, views, temperature_, detached_similarity_);
  }

  std::string group_;
  double temperature_;
  double pair_weight_;
  bool detached_similarity_;
  torch::nn::Sequential projector_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("rocl", "0.1.0", cfamc::component<Rocl>())
