// ACL, Adversarial Contrastive Learning (Jiang et al. NeurIPS 2020), its dual-stream variant: two views of
// each image, both perturbed by the attack, which maximises NT-Xent of the adversarial pair; training
// minimises 1/2 [NT-Xent(clean pair) + NT-Xent(adversarial pair)]. Clean and adversarial images go through
// separate BatchNorm sets ("dual BN"): branch 0 of the backbone and the projector for the clean stream,
// branch 1 for the adversarial one (the attack included), so the backbone needs `branches = 2`.
#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <string>
#include <vector>

namespace {

// The BatchNorm sets of the two streams, in the backbone and in the projector alike.
constexpr int32_t kCleanBranch = 0;
constexpr int32_t kAdversarialBranch = 1;
constexpr int32_t kBranches = 2;

// ACL's projection head: three Linear layers, each followed by BatchNorm (ReLU after the first two), with
// one BatchNorm set per stream as in the reference, so that the adversarial statistics never mix with the
// clean ones anywhere in the network. The second and third Linear have no bias: BatchNorm follows them.
class DualBnProjectorImpl : public torch::nn::Module {
 public:
  DualBnProjectorImpl(int64_t in, int64_t hidden, int64_t out) {
    const std::vector<int64_t> widths = {in, hidden, hidden, out};
    for (size_t layer = 0; layer + 1 < widths.size(); ++layer) {
      linears_->push_back(torch::nn::Linear(torch::nn::LinearOptions(widths[layer], widths[layer + 1]).bias(layer == 0)));
      torch::nn::ModuleList sets;
      for (int32_t b = 0; b < kBranches; ++b) sets->push_back(cfamc::BatchNorm(widths[layer + 1]));
      norms_->push_back(sets);
    }
    register_module("linear", linears_);
    register_module("norm", norms_);
  }

  at::Tensor forward(at::Tensor x, int32_t branch) {
    for (size_t layer = 0; layer < linears_->size(); ++layer) {
      x = linears_[layer]->as<torch::nn::LinearImpl>()->forward(x);
      x = norms_[layer]->as<torch::nn::ModuleListImpl>()->ptr(branch)->as<cfamc::BatchNormImpl>()->forward(x);
      if (layer + 1 < linears_->size()) x = torch::relu(x);
    }
    return x;
  }

 private:
  torch::nn::ModuleList linears_, norms_;
};
TORCH_MODULE(DualBnProjector);

class Acl : public cfamc::Objective {
 public:
  static constexpr const char* name = "acl";
  static constexpr const char* summary =
      "ACL dual-stream: both views attacked, 1/2 [NT-Xent(clean) + NT-Xent(adv)], dual BatchNorm (branches = 2)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("group", CFAMC_OPTION_STRING, "\"views\"", "the view group of the run file to consume (2 views)"),
        cfamc::option("temperature", CFAMC_OPTION_FLOAT, "0.5", "NT-Xent temperature (ACL: 0.5)"),
        cfamc::option("hidden_dim", CFAMC_OPTION_INT, "512", "width of the projector's first two layers (ACL: 512)"),
        cfamc::option("projection_dim", CFAMC_OPTION_INT, "512", "output width of the projector (ACL: 512)"),
    };
  }

  explicit Acl(const cfamc::Context& ctx)
      : Objective(ctx), group_(ctx.text("group")), temperature_(ctx.real("temperature")) {
    const int64_t hidden = ctx.integer("hidden_dim"), out = ctx.integer("projection_dim");
    if (temperature_ <= 0) throw cfamc::Error(CFAMC_ERROR_OPTION, "temperature must be positive");
    if (ctx.feature_dim() < 1 || hidden < 1 || out < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "hidden_dim, projection_dim and the backbone feature dim must be positive");
    }
    projector_ = register_module("projector", DualBnProjector(ctx.feature_dim(), hidden, out));
    cfamc::initialise_linear_layers(*this, ctx.generator());
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_}; }
  std::vector<std::string> attacked_inputs() const override { return {"view1", "view2"}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor&) override {
    return cfamc::split_views(views, group_, 2, "acl");
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase phase, cfamc::TensorMap& log) override {
    require_dual_bn(encoder);
    if (phase == CFAMC_PHASE_ATTACK) {
      // The attack sees the adversarial stream only, through its own BatchNorm set (eval mode comes from
      // the run file's attack.bn_mode = "eval", which the host applies around the attack).
      const at::Tensor value = pair_loss(encoder, pick(clean, adversarial, "view1"), pick(clean, adversarial, "view2"),
                                         kAdversarialBranch);
      log.insert("nt_xent_adv", value.detach());
      return value;
    }
    const at::Tensor clean_value = pair_loss(encoder, clean["view1"], clean["view2"], kCleanBranch);
    log.insert("nt_xent_clean", clean_value.detach());
    // Clean training (no attack yet, or none configured): the clean stream alone, plain SimCLR.
    if (adversarial.is_empty()) return clean_value;
    const at::Tensor adversarial_value = pair_loss(encoder, pick(clean, adversarial, "view1"),
                                                   pick(clean, adversarial, "view2"), kAdversarialBranch);
    log.insert("nt_xent_adv", adversarial_value.detach());
    return 0.5 * (clean_value + adversarial_value);
  }

 private:
  // The backbone must have the adversarial BatchNorm set; without it the method silently becomes
  // single-BN ACL, so refuse instead, at the first loss (the encoder is not known at create).
  static void require_dual_bn(const cfamc::Encoder& encoder) {
    if (encoder.num_branches() < kBranches) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "acl needs a backbone with at least 2 BatchNorm sets (set [backbone] branches = 2); this one has " +
                             std::to_string(encoder.num_branches()));
    }
  }

  static at::Tensor pick(const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial, const std::string& key) {
    return adversarial.contains(key) ? adversarial[key] : clean[key];
  }

  // NT-Xent of (x1, x2) with every BatchNorm of the backbone and the projector in set `branch`, over the
  // global batch (every process gathers all processes' embeddings).
  at::Tensor pair_loss(const cfamc::Encoder& encoder, const at::Tensor& x1, const at::Tensor& x2, int32_t branch) {
    const at::Tensor features = encoder(torch::cat({x1, x2}, 0), branch);
    const at::Tensor z = cfamc::all_gather_views(cfamc::unit_rows(projector_->forward(features, branch)), 2);
    return cfamc::nt_xent(z, 2, temperature_);
  }

  std::string group_;
  double temperature_;
  DualBnProjector projector_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("acl", "0.1.0", cfamc::component<Acl>())
