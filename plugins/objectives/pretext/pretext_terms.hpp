// What the pretext tasks share: where a task runs (its objective, the prefix of its names, the backbone copy it
// trains) and the one cross-entropy term every task logs, with its pretext accuracy.
#pragma once

#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <mutex>
#include <string>

namespace cfamc::pretext {

// A task's feature from the backbone's own forward, as a single-task objective runs it on any backbone.
constexpr int32_t kWholeNetwork = -1;

// Where a task runs. `prefix` starts the names of its labels and log entries ("" alone, "rotation_" in the
// ensemble); `copy` is the copy of the backbone's last stage its feature comes through (ABI 1.3), or
// kWholeNetwork.
struct TaskRole {
  std::string prefix;
  int32_t copy = kWholeNetwork;
};

// The backbone feature of `images` as `role` takes it.
inline at::Tensor feature_of(const cfamc::Encoder& encoder, const at::Tensor& images, const TaskRole& role) {
  return role.copy == kWholeNetwork ? encoder(images) : encoder.stages(images, 0, CFAMC_STAGE_FEATURE, role.copy);
}

// The cross-entropy of `logits` [B, C] against `labels` [B], times `groups`: the rows form that many equal groups
// whose mean cross-entropies are summed (selfie's masked positions, as the reference sums them; 1 elsewhere).
// It goes into `log` as `<prefix>ce_<term>`, with the accuracy of the logits as `<prefix>pretext_accuracy_<term>`.
inline at::Tensor logged_cross_entropy(const at::Tensor& logits, const at::Tensor& labels, const TaskRole& role,
                                       const std::string& term, cfamc::TensorMap& log, int64_t groups = 1) {
  const at::Tensor ce = static_cast<double>(groups) * torch::nn::functional::cross_entropy(logits, labels);
  log.insert(role.prefix + "ce_" + term, ce.detach());
  log.insert(role.prefix + "pretext_accuracy_" + term,
             logits.detach().argmax(1).eq(labels).to(torch::kFloat).mean());
  return ce;
}

// A fresh CPU generator seeded from `generator`, which it advances: one independent stream per task of an
// objective that holds several.
inline at::Generator split_generator(at::Generator& generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return at::detail::createCPUGenerator(generator.get<at::CPUGeneratorImpl>()->random64());
}

}  // namespace cfamc::pretext
