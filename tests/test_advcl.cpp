// The AdvCL objective (Fan et al. 2021): its high-frequency view against a plain DFT, its loss against a direct
// computation from the plugin's own tensors (SupCon over four views written out as sums, pseudo-label CE with
// label -1 ignored), the pseudo-label lookup by sample index and its refusals, and the inputs its attack perturbs
// and the BatchNorm set each view's statistics go to.
#include "torch_catch.hpp"

#include <cfamc/contrastive.hpp>
#include <torch/serialize.h>

#include <cmath>
#include <fstream>
#include <functional>

#include "plugins/components.hpp"
#include "train/objective_oracle.hpp"
#include "make_component.hpp"
#include "objective_checks.hpp"
#include "support.hpp"

using namespace cfamc::host;
using cfamc::test::all_equal;
using cfamc::test::running_means;
using cfamc::test::make;
using Catch::Matchers::Contains;

namespace {

constexpr int64_t kFileSamples = 20;

// A pseudo-label file as the kmeans evaluator writes it: {"k2", "k3"} int64 [20] and "num_samples". Label i of
// K is (i * 7 + K) mod K, except k2's entries 1 and 4, which are -1 (ignored).
at::Tensor file_labels(int64_t k) {
  at::Tensor labels = (torch::arange(kFileSamples, torch::kLong) * 7 + k).remainder(k);
  if (k == 2) labels.index_put_({torch::tensor({1, 4}, torch::kLong)}, -1);
  return labels;
}

std::filesystem::path write_labels(const cfamc::test::TempDir& dir) {
  c10::Dict<std::string, at::Tensor> artifact;
  for (int64_t k : {2, 3}) artifact.insert("k" + std::to_string(k), file_labels(k));
  artifact.insert("num_samples", torch::tensor(kFileSamples, torch::kLong));
  const std::vector<char> bytes = torch::pickle_save(artifact);
  const auto path = dir.path() / "pseudo_labels.pt";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

struct AdvclSetup {
  explicit AdvclSetup(const std::string& extra = "")
      : path(write_labels(dir)),
        backbone(make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "in_channels = 1\nwidth = 4\nbranches = 3")),
        advcl(make<Objective>(CFAMC_KIND_OBJECTIVE, "advcl",
                              "pseudo_labels = '" + path.string() + "'\nk = [2, 3]\nhfc_radius = 2.0\n" +
                                  "hidden_dim = 16\nprojection_dim = 8\n" + extra,
                              backbone->feature_dim())) {
    views.insert("views", torch::rand({2 * kBatch, 1, 8, 8}));
    views.insert("weak", torch::rand({kBatch, 1, 8, 8}));
    clean = advcl->prepare(views, indices);
    adversarial.insert("x_cl", (clean["x_cl"] + 0.03).clamp(0, 1));
    adversarial.insert("x_ce", (clean["x_ce"] - 0.03).clamp(0, 1));
  }
  static constexpr int64_t kBatch = 6;
  cfamc::test::TempDir dir;
  std::filesystem::path path;
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> advcl;
  // Shuffled, and with 1 and 4 (k2 label -1) among them.
  at::Tensor indices = torch::tensor({13, 1, 7, 4, 19, 0}, torch::kLong);
  TensorMap views, clean, adversarial;
};

// The high-frequency component by explicit sums in double: DFT, drop (u, v) whose signed frequencies (the
// distance from the centre of the shifted spectrum) have u^2 + v^2 < r^2, inverse DFT, real part.
at::Tensor direct_hfc(const at::Tensor& image, double r) {
  const int64_t h = image.size(0), w = image.size(1);
  const at::Tensor f = image.to(torch::kDouble);
  const auto a = f.accessor<double, 2>();
  std::vector<double> re(h * w, 0.0), im(h * w, 0.0);
  for (int64_t u = 0; u < h; ++u)
    for (int64_t v = 0; v < w; ++v) {
      const int64_t su = (u + h / 2) % h - h / 2, sv = (v + w / 2) % w - w / 2;
      if (static_cast<double>(su * su + sv * sv) < r * r) continue;  // removed: stays 0
      for (int64_t x = 0; x < h; ++x)
        for (int64_t y = 0; y < w; ++y) {
          const double angle = -2 * M_PI * (static_cast<double>(u * x) / h + static_cast<double>(v * y) / w);
          re[u * w + v] += a[x][y] * std::cos(angle);
          im[u * w + v] += a[x][y] * std::sin(angle);
        }
    }
  at::Tensor out = torch::zeros({h, w}, torch::kDouble);
  auto o = out.accessor<double, 2>();
  for (int64_t x = 0; x < h; ++x)
    for (int64_t y = 0; y < w; ++y) {
      double sum = 0;
      for (int64_t u = 0; u < h; ++u)
        for (int64_t v = 0; v < w; ++v) {
          const double angle = 2 * M_PI * (static_cast<double>(u * x) / h + static_cast<double>(v * y) / w);
          sum += re[u * w + v] * std::cos(angle) - im[u * w + v] * std::sin(angle);  // real part
        }
      o[x][y] = sum / static_cast<double>(h * w);
    }
  return out;
}

// SupCon's unsupervised loss written out (SupConLoss of the reference, labels = None): rows view-major [V*B, d],
// for each row the mean over its V-1 positives of log softmax over all other rows, scaled by -(T / 0.07).
double direct_supcon(const at::Tensor& z_float, int64_t views, double t) {
  const at::Tensor z = z_float.to(torch::kDouble);
  const int64_t n = z.size(0), batch = n / views;
  const at::Tensor s = z.matmul(z.t());
  const auto a = s.accessor<double, 2>();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double denominator = 0;
    for (int64_t k = 0; k < n; ++k)
      if (k != i) denominator += std::exp(a[i][k] / t);
    double positives = 0;
    for (int64_t j = 0; j < n; ++j)
      if (j != i && j % batch == i % batch) positives += a[i][j] / t - std::log(denominator);
    total += -(t / 0.07) * positives / static_cast<double>(views - 1);
  }
  return total / static_cast<double>(n);
}

at::Tensor normalise(const at::Tensor& z) {
  return torch::nn::functional::normalize(z, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

// AdvCL's projector from its tensors, eval-mode BatchNorm set `branch`: Linear, BN, ReLU, Linear, then L2.
at::Tensor projector(const Objective& advcl, const at::Tensor& h, int branch) {
  const TensorMap p = advcl.tensors(CFAMC_ROLE_PARAMETER), b = advcl.tensors(CFAMC_ROLE_BUFFER);
  const std::string norm = "projector.norm." + std::to_string(branch);
  at::Tensor x = h.matmul(p["projector.linear1.weight"].t()) + p["projector.linear1.bias"];
  x = (x - b[norm + ".running_mean"]) / (b[norm + ".running_var"] + 1e-5).sqrt() * p[norm + ".weight"] + p[norm + ".bias"];
  return normalise(x.relu().matmul(p["projector.linear2.weight"].t()) + p["projector.linear2.bias"]);
}

// Mean cross-entropy over the samples whose label is not -1, by log-softmax written out.
double direct_ce(const at::Tensor& logits, const at::Tensor& labels) {
  const at::Tensor log_p = logits.to(torch::kDouble).log_softmax(1);
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < labels.size(0); ++i) {
    const int64_t y = labels[i].item<int64_t>();
    if (y == -1) continue;
    sum -= log_p[i][y].item<double>();
    ++count;
  }
  return sum / static_cast<double>(count);
}

// Shifts the BatchNorm affine parameters of sets 1 and 2 (backbone and projector) away from set 0, so that a
// view through the wrong set gives another value.
void distinguish_sets(Component& component) {
  torch::NoGradGuard no_grad;
  for (auto& item : component.tensors(CFAMC_ROLE_PARAMETER)) {
    const std::string& name = item.key();
    if (name.rfind("heads", 0) == 0 || item.value().dim() != 1) continue;
    for (int set : {1, 2}) {
      const std::string tag = "." + std::to_string(set) + ".";
      if (name.find(tag + "weight") != std::string::npos || name.find(tag + "bias") != std::string::npos)
        item.value().add_(0.3 * set);
    }
  }
}

}  // namespace

TEST_CASE("advcl: x_HFC is the image less its frequencies within r of the centre, as a plain DFT computes it",
          "[advcl]") {
  AdvclSetup s;
  REQUIRE(s.clean["x_hfc"].sizes() == s.views["weak"].sizes());
  for (int64_t i = 0; i < 2; ++i) {
    INFO("image " << i);
    const at::Tensor direct = direct_hfc(s.views["weak"][i][0], 2.0);
    CHECK((s.clean["x_hfc"][i][0].to(torch::kDouble) - direct).abs().max().item<double>() < 1e-4);
    // Falsifiable: the radius matters (r = 1 removes the DC term only), and the result is not clamped.
    CHECK((direct_hfc(s.views["weak"][i][0], 1.0) - direct).abs().max().item<double>() > 1e-3);
  }
  CHECK(s.clean["x_hfc"].min().item<double>() < 0);
  // The weak view itself is what the attack starts from.
  CHECK(torch::equal(s.clean["x_cl"], s.views["weak"]));
  CHECK(torch::equal(s.clean["x_ce"], s.views["weak"]));

  // A constant image has only the DC term, which is removed.
  TensorMap constant;
  constant.insert("views", torch::rand({2 * AdvclSetup::kBatch, 1, 8, 8}));
  constant.insert("weak", torch::full({AdvclSetup::kBatch, 1, 8, 8}, 0.7));
  CHECK(s.advcl->prepare(constant, s.indices)["x_hfc"].abs().max().item<double>() < 1e-5);
}

TEST_CASE("advcl: the loss is (T/0.07) SupCon[x_cl, x1, x2, x_HFC] + 0.2 mean CE of the heads on x_ce, -1 ignored",
          "[advcl]") {
  AdvclSetup s;
  distinguish_sets(*s.backbone);
  distinguish_sets(*s.advcl);
  s.backbone->set_training(false);
  s.advcl->set_training(false);
  torch::NoGradGuard no_grad;
  const LossResult train = s.advcl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_TRAIN);

  const auto embed = [&](const at::Tensor& x, int set) { return projector(*s.advcl, s.backbone->forward(x, set), set); };
  const at::Tensor z = torch::cat({embed(s.adversarial["x_cl"], 1), embed(s.clean["x1"], 0), embed(s.clean["x2"], 0),
                                   embed(s.clean["x_hfc"], 0)});
  const double supcon = direct_supcon(z, 4, 0.5);
  // The SDK's NT-Xent is SupCon's mean log-probability of the positives, up to the T / 0.07 scale.
  CHECK(supcon == Approx(0.5 / 0.07 * cfamc::nt_xent(z, 4, 0.5).item<double>()).epsilon(1e-5));

  const TensorMap p = s.advcl->tensors(CFAMC_ROLE_PARAMETER);
  const at::Tensor features = s.backbone->forward(s.adversarial["x_ce"], 2);
  const at::Tensor labels = s.clean["pseudo_labels"];
  REQUIRE(labels.size(0) == AdvclSetup::kBatch);
  REQUIRE(labels.size(1) == 2);
  REQUIRE(labels.select(1, 0).eq(-1).sum().item<int64_t>() == 2);  // indices 1 and 4
  double ce = 0;
  for (int head = 0; head < 2; ++head) {
    const std::string prefix = "heads." + std::to_string(head);
    ce += direct_ce(features.matmul(p[prefix + ".weight"].t()) + p[prefix + ".bias"], labels.select(1, head)) / 2;
  }
  CHECK(train.loss.item<double>() == Approx(supcon + 0.2 * ce).epsilon(1e-5));
  CHECK(train.scalars["supcon"].item<double>() == Approx(supcon).epsilon(1e-5));
  CHECK(train.scalars["pseudo_ce"].item<double>() == Approx(ce).epsilon(1e-5));
  // The attack maximises the same loss of the same inputs.
  const LossResult attack = s.advcl->loss(*s.backbone, s.clean, s.adversarial, CFAMC_PHASE_ATTACK);
  CHECK(attack.loss.item<double>() == Approx(train.loss.item<double>()).epsilon(1e-6));

  // Falsifiable: x_cl through the normal set, or x_ce through set 1, gives other values.
  const at::Tensor wrong = torch::cat({embed(s.adversarial["x_cl"], 0), z.slice(0, AdvclSetup::kBatch)});
  CHECK(std::abs(direct_supcon(wrong, 4, 0.5) - supcon) > 1e-3);
  const at::Tensor wrong_features = s.backbone->forward(s.adversarial["x_ce"], 1);
  CHECK(std::abs(direct_ce(wrong_features.matmul(p["heads.1.weight"].t()) + p["heads.1.bias"], labels.select(1, 1)) -
                 direct_ce(features.matmul(p["heads.1.weight"].t()) + p["heads.1.bias"], labels.select(1, 1))) > 1e-4);
  // Label -1 is ignored: the head's value is the mean over the other four, and an all -1 batch gives 0, not NaN.
  TensorMap unlabelled = s.clean;
  unlabelled["pseudo_labels"] = torch::full_like(labels, -1);
  const LossResult none = s.advcl->loss(*s.backbone, unlabelled, s.adversarial, CFAMC_PHASE_TRAIN);
  CHECK(none.scalars["pseudo_ce"].item<double>() == 0.0);
  CHECK(none.loss.item<double>() == Approx(supcon).epsilon(1e-5));

  // Options: ce_weight and temperature change the loss as the formula says.
  AdvclSetup weighted("ce_weight = 1.0\ntemperature = 0.2");
  weighted.backbone->set_training(false);
  weighted.advcl->set_training(false);
  const LossResult w = weighted.advcl->loss(*weighted.backbone, weighted.clean, weighted.adversarial, CFAMC_PHASE_TRAIN);
  CHECK(w.loss.item<double>() ==
        Approx(w.scalars["supcon"].item<double>() + w.scalars["pseudo_ce"].item<double>()).epsilon(1e-5));
}

TEST_CASE("advcl: pseudo-labels are looked up by sample index, a missing K or an index beyond the file is refused",
          "[advcl]") {
  AdvclSetup s;
  const at::Tensor shuffled = torch::randperm(kFileSamples, torch::kLong).slice(0, 0, AdvclSetup::kBatch);
  const TensorMap prepared = s.advcl->prepare(s.views, shuffled);
  const at::Tensor expected = torch::stack({file_labels(2).index_select(0, shuffled), file_labels(3).index_select(0, shuffled)}, 1);
  CHECK(torch::equal(prepared["pseudo_labels"], expected));
  CHECK(prepared["pseudo_labels"].scalar_type() == torch::kLong);
  // Another order of the same images, another order of labels.
  const at::Tensor reversed = shuffled.flip(0);
  CHECK(torch::equal(s.advcl->prepare(s.views, reversed)["pseudo_labels"], expected.flip(0)));

  // A K the file lacks: refused at create, naming the file and K.
  const std::string options = "pseudo_labels = '" + s.path.string() + "'\nhidden_dim = 16\nprojection_dim = 8\n";
  const auto make_with = [&](const std::string& k) {
    return make<Objective>(CFAMC_KIND_OBJECTIVE, "advcl", options + k, s.backbone->feature_dim());
  };
  CHECK_THROWS_WITH(make_with("k = [2, 50]"), Contains("K = 50") && Contains(s.path.string()));
  CHECK_THROWS_WITH(make_with(""), Contains("K = 10"));  // the default [2, 10, 50, 100, 500]
  // A file not made yet (a recipe's first step may follow --validate) is refused at the first batch.
  auto waiting = make<Objective>(CFAMC_KIND_OBJECTIVE, "advcl", "pseudo_labels = '" + (s.dir.path() / "none.pt").string() + "'",
                                 s.backbone->feature_dim());
  CHECK_THROWS_WITH(waiting->prepare(s.views, torch::tensor({3, 1, 0, 1, 2, 5}, torch::kLong)),
                    Contains("none.pt") && Contains("cannot read"));

  // An index the file does not reach: the training set is larger than the file's.
  const at::Tensor beyond = torch::tensor({3, 25, 0, 1, 2, 5}, torch::kLong);
  CHECK_THROWS_WITH(s.advcl->prepare(s.views, beyond), Contains("sample index 25") && Contains("labels 20 images"));
}

TEST_CASE("advcl: the attack perturbs x_cl and x_ce, and each BatchNorm set sees only its own views", "[advcl]") {
  AdvclSetup s;
  CHECK(s.advcl->view_groups() == std::vector<std::string>{"views", "weak"});
  CHECK(s.advcl->attacked_inputs() == std::vector<std::string>{"x_cl", "x_ce"});

  // A train-mode attack-phase forward and backward from one saved state, with one input changed at a time.
  s.backbone->set_training(true);
  s.advcl->set_training(true);
  std::vector<std::pair<Component*, TensorMap>> saved;
  for (Component* c : {static_cast<Component*>(s.backbone.get()), static_cast<Component*>(s.advcl.get())}) {
    TensorMap copy;
    for (const auto& item : c->tensors(CFAMC_ROLE_BUFFER)) copy.insert(item.key(), item.value().clone());
    saved.emplace_back(c, copy);
  }
  struct Stats {
    std::vector<at::Tensor> set[3];
  };
  const auto attack_forward = [&](const TensorMap& clean, const TensorMap& adversarial, bool check_gradients) {
    {
      torch::NoGradGuard no_grad;
      for (auto& [component, copy] : saved)
        for (auto& item : component->tensors(CFAMC_ROLE_BUFFER)) item.value().copy_(copy[item.key()]);
    }
    TensorMap candidate;
    for (const auto& item : adversarial) candidate.insert(item.key(), item.value().clone().requires_grad_(true));
    s.advcl->loss(*s.backbone, clean, candidate, CFAMC_PHASE_ATTACK).loss.backward();
    if (check_gradients) {
      for (const char* name : {"x_cl", "x_ce"}) {
        INFO(name);
        REQUIRE(candidate[name].grad().defined());
        CHECK(candidate[name].grad().abs().sum().item<double>() > 0);
      }
    }
    Stats stats;
    for (int set = 0; set < 3; ++set) stats.set[set] = running_means({s.backbone.get(), s.advcl.get()}, set);
    return stats;
  };
  const auto before = [&] {
    Stats stats;
    for (int set = 0; set < 3; ++set) stats.set[set] = running_means({s.backbone.get(), s.advcl.get()}, set);
    return stats;
  }();
  REQUIRE(before.set[0].size() == 3 + 1);  // convnet's three blocks, the projector's one BatchNorm

  const Stats base = attack_forward(s.clean, s.adversarial, true);
  for (int set = 0; set < 3; ++set) {
    INFO("set " << set);
    CHECK_FALSE(all_equal(base.set[set], before.set[set]));
  }
  TensorMap other_cl = s.adversarial, other_ce = s.adversarial, other_clean = s.clean;
  other_cl["x_cl"] = (s.adversarial["x_cl"] * 0.5).detach();
  other_ce["x_ce"] = (s.adversarial["x_ce"] * 0.5).detach();
  other_clean["x1"] = s.clean["x1"] * 0.5;
  const Stats cl = attack_forward(s.clean, other_cl, false);
  const Stats ce = attack_forward(s.clean, other_ce, false);
  const Stats clean = attack_forward(other_clean, s.adversarial, false);
  // x_cl reaches set 1 only, x_ce set 2 only, the clean views set 0 only.
  CHECK(all_equal(cl.set[0], base.set[0]));
  CHECK_FALSE(all_equal(cl.set[1], base.set[1]));
  CHECK(all_equal(cl.set[2], base.set[2]));
  CHECK(all_equal(ce.set[0], base.set[0]));
  CHECK(all_equal(ce.set[1], base.set[1]));
  CHECK_FALSE(all_equal(ce.set[2], base.set[2]));
  CHECK_FALSE(all_equal(clean.set[0], base.set[0]));
  CHECK(all_equal(clean.set[1], base.set[1]));
  CHECK(all_equal(clean.set[2], base.set[2]));

  // The host's PGD against the objective's oracle moves both attacked inputs, within epsilon.
  s.backbone->set_training(false);
  s.advcl->set_training(false);
  auto pgd = make<Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3\nrandom_start = false\nstep_size = \"2/255\"");
  ObjectiveOracle oracle(*s.advcl, *s.backbone, s.clean);
  TensorMap targets;
  for (const auto& name : s.advcl->attacked_inputs()) targets.insert(name, s.clean[name]);
  const TensorMap attacked = pgd->perturb(oracle.get(), targets);
  REQUIRE(attacked.size() == 2);
  for (const char* name : {"x_cl", "x_ce"}) {
    INFO(name);
    const double moved = (attacked[name] - s.clean[name]).abs().max().item<double>();
    CHECK(moved > 1e-3);
    CHECK(moved <= 8.0 / 255 + 1e-6);
  }
  // The attack raised the loss.
  torch::NoGradGuard no_grad;
  CHECK(s.advcl->loss(*s.backbone, s.clean, attacked, CFAMC_PHASE_ATTACK).loss.item<double>() >
        s.advcl->loss(*s.backbone, s.clean, TensorMap(), CFAMC_PHASE_ATTACK).loss.item<double>());
}

TEST_CASE("advcl: a backbone with fewer than 3 BatchNorm sets is refused at the first loss", "[advcl]") {
  AdvclSetup s;
  auto backbone = make<Backbone>(CFAMC_KIND_BACKBONE, "convnet", "in_channels = 1\nwidth = 4\nbranches = 2");
  CHECK_THROWS_WITH(s.advcl->loss(*backbone, s.clean, TensorMap(), CFAMC_PHASE_TRAIN), Contains("branches = 3"));
}
