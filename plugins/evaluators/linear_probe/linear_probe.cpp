// Linear evaluation of a frozen encoder: a linear classifier trained on features computed once in eval mode
// (the backbone output or the objective's representation), reporting top-1 accuracy on the test split.
// `linear_probe` uses each image's feature; `multicrop` the mean feature of N augmented views of each
// image (EMP-SSL's bag-of-features), from a view group of the run file. Both report robust accuracy
// under the evaluator's attacks, end to end (for multicrop, through the views and their mean), on the first
// `robust_max_images` test images, together with the clean accuracy of exactly those images.
// Data-parallel runs: each process encodes its share of each split and gathers all features, so every process
// trains the same head; each attacks its share of the test images and the correct counts are summed.
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cmath>

namespace {

class LinearEvaluation : public cfamc::Evaluator {
 public:
  static std::vector<cfamc_option_decl> linear_options() {
    return {
        cfamc::option("feature", CFAMC_OPTION_STRING, "\"representation\"", "\"backbone\" or \"representation\""),
        cfamc::option("epochs", CFAMC_OPTION_INT, "100", "passes over the training features"),
        cfamc::option("batch_size", CFAMC_OPTION_INT, "100", "features per step"),
        cfamc::option("optimizer", CFAMC_OPTION_STRING, "\"sgd\"", "\"sgd\" or \"adam\""),
        cfamc::option("lr", CFAMC_OPTION_FLOAT, "0.03", "learning rate, annealed by a per-epoch cosine"),
        cfamc::option("momentum", CFAMC_OPTION_FLOAT, "0.9", "SGD momentum"),
        cfamc::option("weight_decay", CFAMC_OPTION_FLOAT, "5e-5", "weight decay"),
        cfamc::option("encode_batch_size", CFAMC_OPTION_INT, "256", "images encoded at once"),
        cfamc::option("train_split", CFAMC_OPTION_STRING, "\"train\"", "the split the head is trained on"),
        cfamc::option("test_split", CFAMC_OPTION_STRING, "\"test\"", "the split the accuracy is measured on"),
        cfamc::option("robust_max_images", CFAMC_OPTION_INT, "0",
                      "attack only the first N test images (their clean accuracy: robust_subset/clean_accuracy); 0: all"),
        cfamc::option("robust_batch_size", CFAMC_OPTION_INT, "100", "images attacked at once"),
        cfamc::option("robust_head_attack", CFAMC_OPTION_STRING, "\"\"",
                      "an attack id of this evaluator: also train a robust head adversarially through the frozen encoder"),
        cfamc::option("robust_head_epochs", CFAMC_OPTION_INT, "5", "epochs of adversarial head training"),
    };
  }

  explicit LinearEvaluation(const cfamc::Context& ctx)
      : Evaluator(ctx),
        epochs_(ctx.integer("epochs")),
        batch_size_(ctx.integer("batch_size")),
        adam_(ctx.text("optimizer") == "adam"),
        lr_(ctx.real("lr")),
        momentum_(ctx.real("momentum")),
        weight_decay_(ctx.real("weight_decay")),
        encode_batch_size_(ctx.integer("encode_batch_size")),
        train_split_(ctx.text("train_split")),
        test_split_(ctx.text("test_split")),
        robust_max_images_(ctx.integer("robust_max_images")),
        robust_batch_size_(ctx.integer("robust_batch_size")),
        robust_head_attack_(ctx.text("robust_head_attack")),
        robust_head_epochs_(ctx.integer("robust_head_epochs")),
        seed_generator_(ctx.generator()) {
    const std::string feature = ctx.text("feature");
    if (feature != "backbone" && feature != "representation") {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "feature must be \"backbone\" or \"representation\"");
    }
    feature_ = feature == "backbone" ? CFAMC_FEATURE_BACKBONE : CFAMC_FEATURE_REPRESENTATION;
    if (!adam_ && ctx.text("optimizer") != "sgd") throw cfamc::Error(CFAMC_ERROR_OPTION, "optimizer must be \"sgd\" or \"adam\"");
    if (epochs_ < 1 || batch_size_ < 1 || lr_ <= 0 || encode_batch_size_ < 1 || robust_batch_size_ < 1 ||
        robust_max_images_ < 0 || robust_head_epochs_ < 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "epochs, batch_size, lr and encode_batch_size must be positive");
    }
  }

  void evaluate(const cfamc::EvalServices& services) override {
    services.set_encoder_training(false);
    const auto [train_images, train_labels] = services.dataset(train_split_);
    const auto [test_images, test_labels] = services.dataset(test_split_);
    const at::Tensor train_features = features(services, train_images);
    const at::Tensor test_features = features(services, test_images);
    const int64_t classes = train_labels.max().item<int64_t>() + 1;

    torch::nn::Linear head(train_features.size(1), classes);
    cfamc::initialise_linear_layers(*head, seed_generator_);
    head->to(train_features.device());
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (adam_) {
      optimizer = std::make_unique<torch::optim::Adam>(head->parameters(),
                                                       torch::optim::AdamOptions(lr_).weight_decay(weight_decay_));
    } else {
      optimizer = std::make_unique<torch::optim::SGD>(
          head->parameters(), torch::optim::SGDOptions(lr_).momentum(momentum_).weight_decay(weight_decay_));
    }
    const int64_t n = train_features.size(0);
    for (int64_t epoch = 0; epoch < epochs_; ++epoch) {
      const double lr = 0.5 * lr_ * (1 + std::cos(M_PI * static_cast<double>(epoch) / static_cast<double>(epochs_)));
      for (auto& group : optimizer->param_groups()) group.options().set_lr(lr);
      const at::Tensor order = torch::randperm(n, seed_generator_, torch::kLong).to(train_features.device());
      for (int64_t start = 0; start < n; start += batch_size_) {
        const at::Tensor idx = order.slice(0, start, start + batch_size_);
        optimizer->zero_grad();
        torch::nn::functional::cross_entropy(head->forward(train_features.index_select(0, idx)),
                                             train_labels.index_select(0, idx))
            .backward();
        optimizer->step();
      }
    }
    {
      torch::NoGradGuard no_grad;
      services.report("accuracy", accuracy(head, test_features, test_labels));
      services.report("train_accuracy", accuracy(head, train_features, train_labels));
    }
    const auto attacks = services.attack_ids();
    if (attacks.empty()) return;
    const TestSplit test{test_images, test_features, test_labels};
    report_robustness(services, head, test, attacks, "");
    if (!robust_head_attack_.empty()) {
      torch::nn::Linear robust = train_robust_head(services, head, train_images, train_labels);
      {
        torch::NoGradGuard no_grad;
        services.report("robust_head/accuracy", accuracy(robust, test_features, test_labels));
      }
      report_robustness(services, robust, test, attacks, "robust_head/");
    }
  }

 protected:
  // The features of a batch of images in [0,1] (float), differentiable with respect to them.
  virtual at::Tensor batch_features(const cfamc::EvalServices& services, const at::Tensor& x) const = 0;
  cfamc_feature feature() const { return feature_; }

 private:
  struct TestSplit {
    const at::Tensor& images;
    const at::Tensor& features;  // the clean features, as `accuracy` uses them
    const at::Tensor& labels;
  };

  // Robust accuracy under each attack, and the worst case over them (a sample counts only if no attack
  // fools the classifier), as AutoAttack reports it: on the attacked images alone, so beside it goes their
  // clean accuracy and number, and an image counts as robust only if it is classified correctly clean too
  // (a random start, or multicrop's fresh views, could otherwise make a clean mistake look robust).
  // Each process attacks its row_share of the n images; the counts are summed over the processes.
  void report_robustness(const cfamc::EvalServices& services, torch::nn::Linear& head, const TestSplit& test,
                         const std::vector<std::string>& attacks, const std::string& prefix) const {
    const int64_t n = robust_max_images_ > 0 ? std::min(robust_max_images_, test.images.size(0)) : test.images.size(0);
    const cfamc::RowShare share = cfamc::row_share(n);
    const at::Tensor images = test.images.slice(0, share.begin, share.end);
    const at::Tensor labels = test.labels.slice(0, share.begin, share.end);
    const at::Tensor clean_correct = correct_predictions(head, test.features.slice(0, share.begin, share.end), labels);
    services.report(prefix + "robust_subset/clean_accuracy", cfamc::shared_fraction(clean_correct, n));
    services.report(prefix + "robust_subset/images", static_cast<double>(n));
    at::Tensor all_correct = clean_correct;
    for (const auto& id : attacks) {
      const at::Tensor correct = robust_correct(services, head, images, labels, id).logical_and(clean_correct);
      services.report(prefix + "robust_accuracy/" + id, cfamc::shared_fraction(correct, n));
      all_correct = all_correct.logical_and(correct);
    }
    if (attacks.size() > 1) {
      services.report(prefix + "robust_accuracy/worst_case", cfamc::shared_fraction(all_correct, n));
    }
  }

  // Per image: classified correctly under attack `id`, end to end through the frozen encoder (eval mode)
  // and `head`. The attack maximises the per-sample cross-entropy of the classifier.
  at::Tensor robust_correct(const cfamc::EvalServices& services, torch::nn::Linear& head, const at::Tensor& images,
                            const at::Tensor& labels, const std::string& id) const {
    services.set_encoder_training(false);
    const int64_t n = images.size(0);
    std::vector<at::Tensor> correct{torch::zeros({0}, labels.options().dtype(torch::kBool))};  // a share may be empty
    for (int64_t start = 0; start < n; start += robust_batch_size_) {
      const int64_t end = std::min(n, start + robust_batch_size_);
      const at::Tensor x = images.slice(0, start, end).to(torch::kFloat).div(255.0);
      const at::Tensor y = labels.slice(0, start, end);
      const auto logits = [&](const cfamc::TensorMap& m) { return head->forward(batch_features(services, m["x"])); };
      cfamc::FunctionOracle oracle(
          [&](const cfamc::TensorMap& m) {
            return torch::nn::functional::cross_entropy(
                logits(m), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
          },
          logits, y);
      const at::Tensor adversarial = services.attack(id, oracle.get(), x);
      torch::NoGradGuard no_grad;
      correct.push_back(head->forward(batch_features(services, adversarial)).argmax(1).eq(y));
    }
    return torch::cat(correct);
  }

  // A copy of the clean head, trained further on adversarial examples made through the frozen encoder.
  torch::nn::Linear train_robust_head(const cfamc::EvalServices& services, torch::nn::Linear& clean,
                                      const at::Tensor& images, const at::Tensor& labels) const {
    torch::nn::Linear robust(clean->options);
    {
      torch::NoGradGuard no_grad;
      robust->weight.copy_(clean->weight);
      robust->bias.copy_(clean->bias);
    }
    robust->to(clean->weight.device());
    torch::optim::Adam optimizer(robust->parameters(), torch::optim::AdamOptions(1e-3));
    services.set_encoder_training(false);
    const int64_t n = images.size(0);
    for (int64_t epoch = 0; epoch < robust_head_epochs_; ++epoch) {
      const at::Tensor order = torch::randperm(n, seed_generator_, torch::kLong).to(images.device());
      for (int64_t start = 0; start < n; start += robust_batch_size_) {
        const at::Tensor idx = order.slice(0, start, start + robust_batch_size_);
        const at::Tensor x = images.index_select(0, idx).to(torch::kFloat).div(255.0);
        const at::Tensor y = labels.index_select(0, idx);
        const auto logits = [&](const cfamc::TensorMap& m) { return robust->forward(batch_features(services, m["x"])); };
        cfamc::FunctionOracle oracle(
            [&](const cfamc::TensorMap& m) {
              return torch::nn::functional::cross_entropy(
                  logits(m), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
            },
            logits, y);
        const at::Tensor adversarial = services.attack(robust_head_attack_, oracle.get(), x);
        at::Tensor features;
        {
          torch::NoGradGuard no_grad;
          features = batch_features(services, adversarial);
        }
        optimizer.zero_grad();
        torch::nn::functional::cross_entropy(robust->forward(features), y).backward();
        optimizer.step();
      }
    }
    return robust;
  }

  // The features of every image: this process encodes its row_share, the shares are gathered.
  at::Tensor features(const cfamc::EvalServices& services, const at::Tensor& images) const {
    torch::NoGradGuard no_grad;
    return cfamc::gathered_over_shares(images.size(0), encode_batch_size_, [&](int64_t begin, int64_t end) {
      return batch_features(services, images.slice(0, begin, end).to(torch::kFloat).div(255.0));
    });
  }

  static at::Tensor correct_predictions(torch::nn::Linear& head, const at::Tensor& features, const at::Tensor& labels) {
    torch::NoGradGuard no_grad;
    return head->forward(features).argmax(1).eq(labels);
  }

  static double accuracy(torch::nn::Linear& head, const at::Tensor& features, const at::Tensor& labels) {
    return fraction(correct_predictions(head, features, labels));
  }

  static double fraction(const at::Tensor& correct) { return correct.to(torch::kDouble).mean().item<double>(); }

  int64_t epochs_, batch_size_;
  bool adam_;
  double lr_, momentum_, weight_decay_;
  int64_t encode_batch_size_;
  std::string train_split_, test_split_;
  int64_t robust_max_images_, robust_batch_size_;
  std::string robust_head_attack_;
  int64_t robust_head_epochs_;
  mutable at::Generator seed_generator_;
  cfamc_feature feature_ = CFAMC_FEATURE_REPRESENTATION;
};

class LinearProbe : public LinearEvaluation {
 public:
  static constexpr const char* name = "linear_probe";
  static constexpr const char* summary = "linear classifier on frozen features; top-1 test accuracy";
  static std::vector<cfamc_option_decl> options() { return linear_options(); }
  using LinearEvaluation::LinearEvaluation;

 protected:
  at::Tensor batch_features(const cfamc::EvalServices& services, const at::Tensor& x) const override {
    return services.encode(x, feature());
  }
};

class MultiCrop : public LinearEvaluation {
 public:
  static constexpr const char* name = "multicrop";
  static constexpr const char* summary = "linear classifier on the mean feature of N augmented views (bag-of-features)";
  static std::vector<cfamc_option_decl> options() {
    auto declared = linear_options();
    declared.push_back(cfamc::option("group", CFAMC_OPTION_STRING, "\"eval_crops\"",
                                     "the run file's view group whose views are averaged ([views.<group>] count = N)"));
    return declared;
  }
  explicit MultiCrop(const cfamc::Context& ctx) : LinearEvaluation(ctx), group_(ctx.text("group")) {}

 protected:
  // Through the averaged embedding: an attack perturbs the image, and every view is made from it.
  at::Tensor batch_features(const cfamc::EvalServices& services, const at::Tensor& x) const override {
    const at::Tensor views = services.make_views(group_, x);  // [N*B, C, S, S], view-major
    const at::Tensor features = services.encode(views, feature());
    return features.view({-1, x.size(0), features.size(1)}).mean(0);
  }

 private:
  std::string group_;
};

}  // namespace

CFAMC_PLUGIN("linear_probe", "0.1.0", cfamc::component<LinearProbe>(), cfamc::component<MultiCrop>())
