// An attack sequence ([attack_sequences] in the run file): attacks run one after another, each only on the
// images that every earlier one failed to break, as AutoAttack's standard evaluation runs APGD-CE,
// APGD-T, FAB-T and Square. It is offered to evaluators as one more attack id; besides the adversarial
// images it keeps, across the evaluator's batches, each attack's robust accuracy after it ran, its
// queries and its time, and flags gradient masking.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "plugins/components.hpp"

namespace cfamc::host {

class AttackSequenceRun {
 public:
  using Members = std::vector<std::pair<std::string, const Attack*>>;

  AttackSequenceRun(std::string id, Members members);

  // Adversarial images for `x` ([N, ...] in [0,1]) against `oracle`, which must be a classification oracle
  // (logits and labels) with a per-sample loss. An image the classifier gets wrong clean is not attacked;
  // one no attack breaks comes back unchanged. Failure(plugin) for an oracle without logits or labels.
  at::Tensor perturb(const cfamc_oracle& oracle, const at::Tensor& x);

  // The figures so far: images, clean_accuracy, per attack robust_accuracy (after it ran), images_attacked,
  // gradient_calls and forward_calls (oracle calls with and without an input gradient), seconds; and
  // gradient_masking_suspected (also logged once as a warning).
  nlohmann::json report() const;

 private:
  struct MemberStats {
    int64_t robust_after = 0;  // images still classified correctly after this attack, over all batches
    int64_t attacked = 0;      // images this attack was run on
    int64_t gradient_queries = 0, forward_queries = 0;  // oracle calls
    double seconds = 0;
  };
  void run_member(size_t index, const cfamc_oracle& oracle, const at::Tensor& x, at::Tensor& x_adv,
                  at::Tensor& robust);
  bool gradient_masking_suspected() const;

  std::string id_;
  Members members_;
  std::vector<MemberStats> stats_;
  int64_t images_ = 0, clean_correct_ = 0;
  bool warned_ = false;
};

}  // namespace cfamc::host
