#include "eval/attack_sequence.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>

#include "failure.hpp"
#include "log.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {
namespace {

// The evaluator's oracle restricted to the images `index` of its batch. The evaluator's loss closes over
// the whole batch (its labels, its clean outputs), so a candidate for the subset is placed into the batch
// and the subset's rows are read back; BatchNorm runs in eval mode, so the other rows change nothing. It
// counts the calls, with an input gradient and without.
struct SubsetOracle {
  const cfamc_oracle& full;
  at::Tensor base;   // the batch's clean images, detached
  at::Tensor index;  // int64 rows of the subset
  bool whole = false;
  int64_t* gradient_queries;
  int64_t* forward_queries;

  // Logits are per image whatever the batch (an attack may ask for a few images only); the loss closes over
  // the batch's labels, so the subset's candidates go into the batch.
  at::Tensor call(decltype(cfamc_oracle::loss) function, const cfamc_named_tensors* inputs) const {
    const at::Tensor part = to_map(inputs)["x"];
    ++*((c10::GradMode::is_enabled() && part.requires_grad()) ? gradient_queries : forward_queries);
    const bool per_image = function == full.logits;
    TensorMap batch;
    batch.insert("x", whole || per_image ? part : base.index_copy(0, index, part));
    const NamedTensorsView view(batch);
    cfamc_tensor* raw = nullptr;
    check_plugin(function(full.self, view.get(), &raw), "the evaluator's oracle");
    const at::Tensor out = adopt(raw);
    if (per_image || whole) return out;
    if (out.dim() != 1 || out.size(0) != base.size(0)) {
      fail(ExitCode::plugin, "an attack sequence needs a per-sample loss ([N]) from the evaluator's oracle");
    }
    return out.index_select(0, index);
  }
};

cfamc_oracle c_oracle(SubsetOracle& subset, const cfamc_tensor* labels) {
  return cfamc_oracle{
      sizeof(cfamc_oracle), &subset,
      [](void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
        return guarded([&] {
          auto& s = *static_cast<SubsetOracle*>(self);
          *out = make_handle(s.call(s.full.loss, inputs));
        });
      },
      [](void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
        return guarded([&] {
          auto& s = *static_cast<SubsetOracle*>(self);
          *out = make_handle(s.call(s.full.logits, inputs));
        });
      },
      labels};
}

at::Tensor predictions(const cfamc_oracle& oracle, const at::Tensor& x) {
  c10::NoGradGuard no_grad;
  TensorMap batch;
  batch.insert("x", x);
  const NamedTensorsView view(batch);
  cfamc_tensor* raw = nullptr;
  check_plugin(oracle.logits(oracle.self, view.get(), &raw), "the evaluator's oracle");
  return adopt(raw).argmax(1);
}

}  // namespace

AttackSequenceRun::AttackSequenceRun(std::string id, Members members)
    : id_(std::move(id)), members_(std::move(members)), stats_(members_.size()) {}

at::Tensor AttackSequenceRun::perturb(const cfamc_oracle& oracle, const at::Tensor& x) {
  if (oracle.logits == nullptr || oracle.labels == nullptr) {
    fail(ExitCode::plugin, "attack sequence '" + id_ + "' needs a classification oracle (logits and labels)");
  }
  const at::Tensor labels = oracle.labels->tensor;
  at::Tensor robust = predictions(oracle, x).eq(labels);
  images_ += x.size(0);
  clean_correct_ += robust.sum().item<int64_t>();
  at::Tensor x_adv = x.detach().clone();
  for (size_t i = 0; i < members_.size(); ++i) run_member(i, oracle, x, x_adv, robust);
  if (!warned_ && gradient_masking_suspected()) {
    warned_ = true;
    log(LogLevel::warn, "attack sequence '" + id_ + "': an attack that uses no gradient broke images the gradient "
                        "attacks before it could not: the classifier may mask its gradients, so gradient attacks "
                        "alone would overstate its robustness");
  }
  return x_adv;
}

// Runs attack `index` on the images still `robust`, keeps what it breaks in `x_adv`, updates `robust`.
void AttackSequenceRun::run_member(size_t index, const cfamc_oracle& oracle, const at::Tensor& x, at::Tensor& x_adv,
                                   at::Tensor& robust) {
  MemberStats& stats = stats_[index];
  const at::Tensor rows = robust.nonzero().select(1, 0);
  const int64_t count = rows.size(0);
  if (count > 0) {
    const auto start = std::chrono::steady_clock::now();
    SubsetOracle subset{oracle, x.detach(), rows, count == x.size(0), &stats.gradient_queries, &stats.forward_queries};
    const at::Tensor labels = oracle.labels->tensor.index_select(0, rows);
    cfamc_tensor labels_handle{labels};
    const cfamc_oracle restricted = c_oracle(subset, &labels_handle);
    TensorMap inputs;
    inputs.insert("x", x.index_select(0, rows));
    const at::Tensor candidate = members_[index].second->perturb(restricted, inputs)["x"].detach();
    const at::Tensor broken = predictions(oracle, x.detach().index_copy(0, rows, candidate)).index_select(0, rows).ne(labels);
    const at::Tensor broken_rows = rows.masked_select(broken);
    x_adv.index_copy_(0, broken_rows, candidate.index_select(0, broken.nonzero().select(1, 0)));
    robust.index_fill_(0, broken_rows, false);
    stats.attacked += count;
    stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  stats.robust_after += robust.sum().item<int64_t>();
}

// As the reference checks it: an attack without gradients lowers the robust accuracy left by the gradient
// attacks before it by more than 0.2 points.
bool AttackSequenceRun::gradient_masking_suspected() const {
  bool gradient_before = false;
  int64_t robust_before = images_;
  for (size_t i = 0; i < members_.size(); ++i) {
    const bool black_box = stats_[i].attacked > 0 && stats_[i].gradient_queries == 0;
    if (black_box && gradient_before && robust_before - stats_[i].robust_after > 0.002 * static_cast<double>(images_)) return true;
    gradient_before = gradient_before || stats_[i].gradient_queries > 0;
    robust_before = stats_[i].robust_after;
  }
  return false;
}

nlohmann::json AttackSequenceRun::report() const {
  const double images = static_cast<double>(std::max<int64_t>(images_, 1));
  nlohmann::json out = {{"images", images_}, {"clean_accuracy", static_cast<double>(clean_correct_) / images}};
  for (size_t i = 0; i < members_.size(); ++i) {
    const MemberStats& s = stats_[i];
    out[members_[i].first] = {{"robust_accuracy", static_cast<double>(s.robust_after) / images},
                              {"images_attacked", s.attacked},
                              {"gradient_calls", s.gradient_queries},
                              {"forward_calls", s.forward_queries},
                              {"seconds", s.seconds}};
  }
  const bool masking = gradient_masking_suspected();
  out["gradient_masking_suspected"] = masking ? 1 : 0;
  return out;
}

}  // namespace cfamc::host
