// A small classifier trained briefly on Fashion-MNIST (Debian's package) and the first 300 test images,
// shared by the attack tests (trained once per test binary), the oracles an evaluator would make of it, and
// the check that an evaluation-only attack refuses the training oracle.
#pragma once

#include <torch/torch.h>

#include "data/datasets.hpp"
#include "plugins/components.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"
#include "train/objective_oracle.hpp"
#include "make_component.hpp"

namespace cfamc::test {

// A two-layer MLP: 3000 training images, 30 full-batch Adam steps.
struct FashionClassifier {
  FashionClassifier() {
    const host::ImageSet train = host::load_split({"fashion_mnist", ""}, "train"), test = host::load_split({"fashion_mnist", ""}, "test");
    const at::Tensor x_train = train.images.slice(0, 0, 3000).to(torch::kFloat).div(255).flatten(1);
    const at::Tensor y_train = train.labels.slice(0, 0, 3000);
    x = test.images.slice(0, 0, 300).to(torch::kFloat).div(255);
    y = test.labels.slice(0, 0, 300);
    torch::manual_seed(0);
    model = torch::nn::Sequential(torch::nn::Linear(784, 64), torch::nn::ReLU(), torch::nn::Linear(64, 10));
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
    for (int epoch = 0; epoch < 30; ++epoch) {
      optimizer.zero_grad();
      torch::nn::functional::cross_entropy(model->forward(x_train), y_train).backward();
      optimizer.step();
    }
  }
  at::Tensor correct(const at::Tensor& images) const {
    torch::NoGradGuard no_grad;
    return model->forward(images.flatten(1)).argmax(1).eq(y);
  }
  double accuracy(const at::Tensor& images) const { return correct(images).to(torch::kDouble).mean().item<double>(); }

  mutable torch::nn::Sequential model{nullptr};  // forward is not const
  at::Tensor x, y;
};

inline const FashionClassifier& fashion() {
  static const FashionClassifier instance;
  return instance;
}

// The evaluator side: a classification oracle (per-sample cross-entropy, logits, labels) over the
// classifier. `quantised` rounds the pixels to 1/8 first, which leaves the model's decisions nearly as they
// were and its input gradient zero: gradient masking by construction.
struct ClassifierOracle {
  explicit ClassifierOracle(bool quantised) : quantised(quantised), labels{fashion().y} {}
  at::Tensor logits(const at::Tensor& x) const {
    const at::Tensor seen = quantised ? x.mul(8).round().div(8) : x;
    return fashion().model->forward(seen.flatten(1));
  }
  cfamc_oracle get() {
    return {sizeof(cfamc_oracle), this,
            [](void* self, const cfamc_named_tensors* in, cfamc_tensor** out) {
              return host::guarded([&] {
                auto* o = static_cast<ClassifierOracle*>(self);
                *out = host::make_handle(at::cross_entropy_loss(o->logits(host::to_map(in)["x"]), o->labels.tensor, {}, at::Reduction::None));
              });
            },
            [](void* self, const cfamc_named_tensors* in, cfamc_tensor** out) {
              return host::guarded([&] { *out = host::make_handle(static_cast<ClassifierOracle*>(self)->logits(host::to_map(in)["x"])); });
            },
            &labels};
  }
  double accuracy(const at::Tensor& x) const {
    torch::NoGradGuard no_grad;
    return logits(x).argmax(1).eq(fashion().y).to(at::kDouble).mean().item<double>();
  }
  bool quantised;
  cfamc_tensor labels;
};

// A classifier oracle that serves logits and labels only. Its loss is an error, and it records how it was
// called: an attack that asked for the loss, sent inputs requiring grad or built a graph would show here.
struct LogitsOnlyOracle {
  explicit LogitsOnlyOracle(const FashionClassifier& c) : classifier(c), labels{c.y} {}
  cfamc_oracle get() {
    return {sizeof(cfamc_oracle), this,
            [](void* self, const cfamc_named_tensors*, cfamc_tensor**) -> cfamc_error* {
              ++static_cast<LogitsOnlyOracle*>(self)->loss_calls;
              return host::make_error(CFAMC_ERROR_UNSUPPORTED, "this oracle has no loss");
            },
            [](void* self, const cfamc_named_tensors* in, cfamc_tensor** out) -> cfamc_error* {
              auto* o = static_cast<LogitsOnlyOracle*>(self);
              const at::Tensor x = host::to_map(in)["x"];
              o->rows += x.size(0);
              o->inputs_requiring_grad += x.requires_grad() ? 1 : 0;
              const at::Tensor logits = o->classifier.model->forward(x.flatten(1));
              o->graphs_built += logits.requires_grad() ? 1 : 0;
              *out = host::make_handle(logits);
              return nullptr;
            },
            &labels};
  }

  const FashionClassifier& classifier;
  cfamc_tensor labels;
  int64_t loss_calls = 0, rows = 0, inputs_requiring_grad = 0, graphs_built = 0;
};

// The attack `plugin` refuses the training oracle (an objective's loss, no logits or labels) with an error
// naming itself, without calling it.
inline void check_refuses_training_oracle(const std::string& plugin) {
  auto attack = make<host::Attack>(CFAMC_KIND_ATTACK, plugin);
  auto backbone = make<host::Backbone>(CFAMC_KIND_BACKBONE, "convnet", "width = 8");
  auto simclr = make<host::Objective>(CFAMC_KIND_OBJECTIVE, "simclr", "hidden_dim = 16\nprojection_dim = 8",
                                      backbone->feature_dim());
  host::TensorMap clean, attacked;
  clean.insert("view1", torch::rand({4, 3, 8, 8}));
  clean.insert("view2", torch::rand({4, 3, 8, 8}));
  attacked.insert("view2", clean["view2"]);
  host::ObjectiveOracle oracle(*simclr, *backbone, clean);
  try {
    attack->perturb(oracle.get(), attacked);
    FAIL(plugin + " accepted the training oracle");
  } catch (const host::Failure& e) {
    CHECK(e.code() == host::ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("plugin '" + plugin + "'") &&
                                          Catch::Matchers::Contains("needs an oracle with logits and labels"));
  }
  CHECK(oracle.calls() == 0);
}

}  // namespace cfamc::test
