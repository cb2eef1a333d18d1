// AdvCL, Adversarial Contrastive Learning with high-frequency views and pseudo-label supervision (Fan et al.
// NeurIPS 2021), as its reference code (LijieFan/AdvCL, pretraining_advCL.py) trains it:
//   views    x1, x2 strong (group `group`, 2 views), x_org weak (group `weak_group`, 1 view: RandomCrop with
//            padding + flip), x_HFC = the high-frequency component of x_org (2-D FFT per channel, centred, the
//            frequencies at distance < `hfc_radius` from the centre zeroed, inverse FFT, real part, no clamp),
//            computed here in `prepare`, batched on the views' device.
//   attacked x_cl and x_ce, both starting from x_org, as the reference's AttackPGD does (x_cl = x_ce = images_org,
//            the projection ball around images_org); the run file's [attack] perturbs both.
//   loss     L = L_CL + ce_weight * L_CE, the same in the attack phase (maximised) and in training (minimised):
//            L_CL = (T / base_T) * NT-Xent over the 4 views [x_cl, x1, x2, x_HFC] at T (SupCon's unsupervised
//                   loss, mean log-probability of each row's three positives), on the L2-normalised projection;
//            L_CE = mean over the heads K of CE(head_K(f(x_ce)), y_K), labels -1 ignored.
//            Since x_cl enters only L_CL and x_ce only L_CE, maximising L maximises each term in its own input.
//   BN sets  the backbone and the projector have three BatchNorm sets: 0 for x1, x2, x_HFC (each forwarded on
//            its own, with its own batch statistics, as the reference does), 1 for x_cl, 2 for x_ce. So the
//            backbone needs `branches = 3`; evaluators pick a set with their `bn_branch` (AdvCL evaluates with 1).
//   heads    projector Linear(D, hidden) + BN + ReLU + Linear(hidden, out); one Linear(D, K) head per K.
//   labels   pseudo-labels by dataset sample index, from the artifact of the `kmeans` evaluator (option
//            `pseudo_labels`): torch::pickle_load of a dict {"k<K>": int64 [N], "num_samples": int64 0-d}.
//            A K missing from the file is refused at create; a sample index outside [0, N) is refused in
//            `prepare` (the file belongs to another training set, or to a smaller slice of it).
#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/serialize.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

constexpr int32_t kNormalBranch = 0;  // x1, x2, x_HFC
constexpr int32_t kClBranch = 1;      // x_cl, the contrastive adversarial view
constexpr int32_t kCeBranch = 2;      // x_ce, the pseudo-label CE adversarial view
constexpr int32_t kBranches = 3;

// Linear(in, hidden) + BN + ReLU + Linear(hidden, out), with one BatchNorm set per branch.
class MultiBnProjectorImpl : public torch::nn::Module {
 public:
  MultiBnProjectorImpl(int64_t in, int64_t hidden, int64_t out) {
    first_ = register_module("linear1", torch::nn::Linear(in, hidden));
    for (int32_t b = 0; b < kBranches; ++b) norms_->push_back(cfamc::BatchNorm(hidden));
    register_module("norm", norms_);
    second_ = register_module("linear2", torch::nn::Linear(hidden, out));
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    at::Tensor h = norms_->ptr(branch)->as<cfamc::BatchNormImpl>()->forward(first_->forward(x));
    return second_->forward(torch::relu(h));
  }

 private:
  torch::nn::Linear first_{nullptr}, second_{nullptr};
  torch::nn::ModuleList norms_;
};
TORCH_MODULE(MultiBnProjector);

// The high-frequency component of images [N, C, H, W]: per image and channel, the 2-D DFT, centred
// (fftshift), every frequency at Euclidean distance < `radius` from the centre (row H/2, column W/2 after the
// shift, the DC term) set to zero, un-centred, inverse DFT, real part. No clamp: the result has zero mean and
// negative values. As the reference's fr_util.generate_high, for square and non-square images alike.
inline at::Tensor high_frequency_component(const at::Tensor& images, double radius) {
  const int64_t h = images.size(-2), w = images.size(-1);
  const auto options = torch::TensorOptions().dtype(torch::kFloat).device(images.device());
  const at::Tensor rows = torch::arange(h, options).sub(static_cast<double>(h / 2)).pow(2).unsqueeze(1);
  const at::Tensor cols = torch::arange(w, options).sub(static_cast<double>(w / 2)).pow(2).unsqueeze(0);
  const at::Tensor keep = (rows + cols).lt(radius * radius).logical_not();  // [H, W], centred layout
  const std::vector<int64_t> dims = {-2, -1};
  const at::Tensor spectrum = torch::fft::fftshift(torch::fft::fft2(images, c10::nullopt, dims), dims);
  const at::Tensor kept = spectrum * keep.to(spectrum.dtype());
  return torch::real(torch::fft::ifft2(torch::fft::ifftshift(kept, dims), c10::nullopt, dims)).to(images.dtype());
}

class AdvCl : public cfamc::Objective {
 public:
  static constexpr const char* name = "advcl";
  static constexpr const char* summary =
      "AdvCL: SupCon over [x_cl, x1, x2, x_HFC] + pseudo-label CE on x_cl/x_ce adversarial views, 3 BN sets "
      "(branches = 3)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("pseudo_labels", CFAMC_OPTION_STRING, nullptr,
                      "path of the kmeans evaluator's artifact (pseudo_labels.pt) for the training split"),
        cfamc::option("k", CFAMC_OPTION_INT_LIST, "[2, 10, 50, 100, 500]",
                      "numbers of clusters of the pseudo-label heads, each one a \"k<K>\" of the file (AdvCL: 2..500)"),
        cfamc::option("group", CFAMC_OPTION_STRING, "\"views\"", "the view group of the two strong views x1, x2"),
        cfamc::option("weak_group", CFAMC_OPTION_STRING, "\"weak\"",
                      "the view group of the one weak view x_org (crop = false, padding = 4: RandomCrop + flip)"),
        cfamc::option("hfc_radius", CFAMC_OPTION_FLOAT, "8.0",
                      "frequencies at distance < this from the spectrum's centre are removed (AdvCL: 8 on 32x32)"),
        cfamc::option("temperature", CFAMC_OPTION_FLOAT, "0.5", "SupCon temperature T (AdvCL: 0.5)"),
        cfamc::option("base_temperature", CFAMC_OPTION_FLOAT, "0.07",
                      "SupCon's base temperature: the contrastive loss is scaled by T / this (0.07)"),
        cfamc::option("ce_weight", CFAMC_OPTION_FLOAT, "0.2", "weight of the pseudo-label cross-entropy (AdvCL: 0.2)"),
        cfamc::option("hidden_dim", CFAMC_OPTION_INT, "512", "hidden width of the projector (AdvCL: 512)"),
        cfamc::option("projection_dim", CFAMC_OPTION_INT, "128", "output width of the projector (AdvCL: 128)"),
    };
  }

  explicit AdvCl(const cfamc::Context& ctx)
      : Objective(ctx),
        group_(ctx.text("group")),
        weak_group_(ctx.text("weak_group")),
        radius_(ctx.real("hfc_radius")),
        temperature_(ctx.real("temperature")),
        base_temperature_(ctx.real("base_temperature")),
        ce_weight_(ctx.real("ce_weight")),
        ks_(ctx.integers("k")) {
    const int64_t hidden = ctx.integer("hidden_dim"), out = ctx.integer("projection_dim");
    if (group_ == weak_group_) throw cfamc::Error(CFAMC_ERROR_OPTION, "group and weak_group must be different groups");
    if (!(radius_ >= 0)) throw cfamc::Error(CFAMC_ERROR_OPTION, "hfc_radius must be 0 or more");
    if (!(temperature_ > 0) || !(base_temperature_ > 0)) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "temperature and base_temperature must be positive");
    }
    if (!(ce_weight_ >= 0)) throw cfamc::Error(CFAMC_ERROR_OPTION, "ce_weight must be 0 or more");
    if (ctx.feature_dim() < 1 || hidden < 1 || out < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "hidden_dim, projection_dim and the backbone feature dim must be positive");
    }
    if (ks_.empty()) throw cfamc::Error(CFAMC_ERROR_OPTION, "k: at least one number of clusters");
    for (int64_t k : ks_)
      if (k < 2) throw cfamc::Error(CFAMC_ERROR_OPTION, "k: every number of clusters must be at least 2");
    path_ = ctx.text("pseudo_labels");
    // A recipe's run file names the artifact of its first step, which --validate may precede: a file that is
    // not there yet is read at the first batch; one that is there is checked now.
    if (std::ifstream(path_).good()) {
      load_pseudo_labels(path_);
    } else {
      ctx.warn("pseudo_labels: '" + path_ + "' does not exist yet; the run needs it at its first step");
    }

    projector_ = register_module("projector", MultiBnProjector(ctx.feature_dim(), hidden, out));
    heads_ = register_module("heads", torch::nn::ModuleList());
    for (int64_t k : ks_) heads_->push_back(torch::nn::Linear(ctx.feature_dim(), k));
    cfamc::initialise_linear_layers(*this, ctx.generator());
    to(ctx.device());
  }

  std::vector<std::string> view_groups() const override { return {group_, weak_group_}; }
  std::vector<std::string> attacked_inputs() const override { return {"x_cl", "x_ce"}; }

  cfamc::TensorMap prepare(const cfamc::TensorMap& views, const at::Tensor& sample_indices) override {
    const at::Tensor& strong = views[group_];
    const at::Tensor& weak = views[weak_group_];
    const int64_t batch = weak.size(0);
    if (strong.size(0) != 2 * batch) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "advcl: group '" + group_ + "' must hold 2 views per image and '" + weak_group_ +
                             "' 1 (count = 2 and count = 1); got " + std::to_string(strong.size(0)) + " and " +
                             std::to_string(batch) + " images");
    }
    const auto pair = strong.chunk(2, 0);
    cfamc::TensorMap inputs;
    inputs.insert("x1", pair[0]);
    inputs.insert("x2", pair[1]);
    inputs.insert("x_hfc", high_frequency_component(weak, radius_));
    inputs.insert("x_cl", weak);
    inputs.insert("x_ce", weak);
    inputs.insert("pseudo_labels", lookup(sample_indices, batch).to(weak.device()));
    return inputs;
  }

  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial,
                  cfamc_phase /*phase*/, cfamc::TensorMap& log) override {
    if (encoder.num_branches() < kBranches) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "advcl needs a backbone with 3 BatchNorm sets (set [backbone] branches = 3); this one has " +
                             std::to_string(encoder.num_branches()));
    }
    // The same loss in both phases: the attack maximises it in x_cl and x_ce, training minimises it. Without
    // an attack (clean training) x_cl and x_ce are the clean weak view.
    const at::Tensor x_cl = pick(clean, adversarial, "x_cl"), x_ce = pick(clean, adversarial, "x_ce");
    std::vector<at::Tensor> z;
    z.push_back(embed(encoder, x_cl, kClBranch));
    for (const char* view : {"x1", "x2", "x_hfc"}) z.push_back(embed(encoder, clean[view], kNormalBranch));
    // SupCon's negatives are the global batch's: every process gathers all processes' embeddings.
    const at::Tensor global = cfamc::all_gather_views(torch::cat(z, 0), 4);
    const at::Tensor contrastive = (temperature_ / base_temperature_) * cfamc::nt_xent(global, 4, temperature_);

    const at::Tensor ce = pseudo_label_ce(encoder(x_ce, kCeBranch), clean["pseudo_labels"]);

    log.insert("supcon", contrastive.detach());
    log.insert("pseudo_ce", ce.detach());
    return contrastive + ce_weight_ * ce;
  }

 private:
  static at::Tensor pick(const cfamc::TensorMap& clean, const cfamc::TensorMap& adversarial, const std::string& key) {
    return adversarial.contains(key) ? adversarial[key] : clean[key];
  }

  // The mean over the heads of each head's cross-entropy averaged over the batch's labelled samples (a batch
  // with none labelled contributes 0, not 0/0). The batch is the global one: in a data-parallel run the sums
  // and the counts are summed over the processes (differentiably), as one process holding it would count.
  at::Tensor pseudo_label_ce(const at::Tensor& features, const at::Tensor& labels) {
    std::vector<at::Tensor> sums, counts;
    for (size_t i = 0; i < ks_.size(); ++i) {
      const at::Tensor logits = heads_[i]->as<torch::nn::Linear>()->forward(features);
      const at::Tensor y = labels.select(1, static_cast<int64_t>(i));
      sums.push_back(torch::nn::functional::cross_entropy(
          logits, y, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1).reduction(torch::kSum)));
      counts.push_back(y.ne(-1).sum());
    }
    const at::Tensor summed = cfamc::all_reduce_sum(torch::stack(sums));
    const at::Tensor labelled = cfamc::all_reduce_sum(torch::stack(counts)).clamp_min(1).to(summed.dtype());
    at::Tensor ce = torch::zeros({}, features.options());
    for (size_t i = 0; i < ks_.size(); ++i) ce = ce + summed[i] / labelled[i];
    return ce / static_cast<double>(ks_.size());
  }

  // L2-normalised projection of x, backbone and projector in BatchNorm set `branch`.
  at::Tensor embed(const cfamc::Encoder& encoder, const at::Tensor& x, int32_t branch) {
    return cfamc::unit_rows(projector_->forward(encoder(x, branch), branch));
  }

  void load_pseudo_labels(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: cannot read '" + path +
                                                 "' (the kmeans evaluator's artifact of a clean pre-training run)");
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue value;
    try {
      value = torch::pickle_load(bytes);
    } catch (const std::exception& e) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "' is not a pickled tensor dict: " + e.what());
    }
    if (!value.isGenericDict()) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "' does not hold a dict");
    }
    const c10::Dict<c10::IValue, c10::IValue> dict = value.toGenericDict();
    const auto tensor_at = [&](const std::string& key) -> at::Tensor {
      if (!dict.contains(key) || !dict.at(key).isTensor()) return at::Tensor();
      return dict.at(key).toTensor();
    };
    const at::Tensor count = tensor_at("num_samples");
    if (!count.defined() || count.numel() != 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "' has no \"num_samples\"");
    }
    num_samples_ = count.item<int64_t>();
    std::vector<at::Tensor> columns;
    for (int64_t k : ks_) {
      const std::string key = "k" + std::to_string(k);
      const at::Tensor labels = tensor_at(key);
      if (!labels.defined()) {
        throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "' has no labels for K = " +
                                                   std::to_string(k) + " (no \"" + key +
                                                   "\"); add it to the kmeans evaluator's k, or drop it from advcl's k");
      }
      if (labels.dim() != 1 || labels.size(0) != num_samples_ || labels.is_floating_point()) {
        throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "': \"" + key + "\" is not integer [" +
                                                   std::to_string(num_samples_) + "]");
      }
      if (labels.numel() > 0 && (labels.min().item<int64_t>() < -1 || labels.max().item<int64_t>() >= k)) {
        throw cfamc::Error(CFAMC_ERROR_OPTION, "pseudo_labels: '" + path + "': \"" + key +
                                                   "\" has labels outside [-1, " + std::to_string(k) + ")");
      }
      columns.push_back(labels.to(torch::kCPU, torch::kLong));
    }
    labels_ = torch::stack(columns, 1).contiguous();  // [N, number of K], CPU
    path_ = path;
  }

  // The pseudo-labels [B, number of K] of the batch's images, by dataset index, on the indices' device. The
  // bounds check costs one small device-to-host copy per batch.
  at::Tensor lookup(const at::Tensor& sample_indices, int64_t batch) {
    if (!sample_indices.defined()) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "advcl needs the batch's sample indices (none were given)");
    }
    const at::Tensor indices = sample_indices.reshape({-1}).to(torch::kLong);
    if (indices.size(0) != batch) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "advcl: " + std::to_string(indices.size(0)) +
                                                           " sample indices for " + std::to_string(batch) + " images");
    }
    if (!labels_.defined()) load_pseudo_labels(path_);
    if (!device_labels_.defined() || device_labels_.device() != indices.device()) {
      device_labels_ = labels_.to(indices.device());
    }
    if (batch == 0) return device_labels_.new_empty({0, labels_.size(1)});
    const at::Tensor bounds = torch::stack({indices.max(), indices.min()}).cpu();
    const int64_t largest = bounds[0].item<int64_t>(), smallest = bounds[1].item<int64_t>();
    if (largest >= num_samples_ || smallest < 0) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "advcl: sample index " + std::to_string(largest >= num_samples_ ? largest : smallest) +
                             " is outside the pseudo-label file '" + path_ + "', which labels " +
                             std::to_string(num_samples_) +
                             " images: the file was made for another (or a smaller) training set");
    }
    return device_labels_.index_select(0, indices);
  }

  std::string group_, weak_group_;
  double radius_, temperature_, base_temperature_, ce_weight_;
  std::vector<int64_t> ks_;
  std::string path_;
  int64_t num_samples_ = 0;
  at::Tensor labels_, device_labels_;  // [N, number of K]: on the CPU, and on the sample indices' device
  MultiBnProjector projector_{nullptr};
  torch::nn::ModuleList heads_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("advcl", "0.1.0", cfamc::component<AdvCl>())
