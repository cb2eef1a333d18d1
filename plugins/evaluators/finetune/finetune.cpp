// Fine-tuning evaluation of a pre-trained encoder: a linear head (and, in `aff`, the encoder itself) trained
// on the labelled training split, as the adversarial fine-tuning protocols of AdvCL (Fan et al. 2021) and of
// "Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning" (Chen et al. 2020) run it.
// `slf`: frozen encoder, head trained with cross-entropy on clean features. `alf`: frozen encoder, head
// trained on adversarial examples made end to end through encoder and head. `aff`: encoder and head trained
// together on adversarial examples. Adversarial training is Madry's (cross-entropy on the attack's examples)
// or TRADES (Zhang et al. 2019). Reports the clean test accuracy and, as linear_probe does, the robust
// accuracy under each of the evaluator's attacks on the first `robust_max_images` test images beside the
// clean accuracy of exactly those images.
//
// Data-parallel runs: the training is replicated, every process taking the same steps on the same batches;
// the encoding of whole splits is shared out (each process encodes its share, all features are gathered), and
// so are the final attacks on the test images (each process attacks its share, the counts are summed).
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>
#include <cfamc/precision.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>

namespace {

enum class Mode { slf, alf, aff };

at::Tensor per_sample_cross_entropy(const at::Tensor& logits, const at::Tensor& labels) {
  return torch::nn::functional::cross_entropy(
      logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
}

// KL(softmax(natural) || softmax(adversarial)) per sample, summed over classes: what PyTorch's
// KLDivLoss(log_softmax(adversarial), softmax(natural)) sums. From log-probabilities, so that a vanishing
// natural probability contributes 0 rather than 0 * log 0. In float32 under any precision.
at::Tensor per_sample_kl(const at::Tensor& natural_logits, const at::Tensor& adversarial_logits) {
  const at::Tensor log_p = torch::log_softmax(cfamc::widened(natural_logits), 1);
  return (log_p.exp() * (log_p - torch::log_softmax(cfamc::widened(adversarial_logits), 1))).sum(1);
}

double fraction(const at::Tensor& correct) { return correct.to(torch::kDouble).mean().item<double>(); }

bool one_of(const std::string& value, std::initializer_list<const char*> allowed) {
  return std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return value == a; });
}

class Finetune : public cfamc::Evaluator {
 public:
  static constexpr const char* name = "finetune";
  static constexpr const char* summary =
      "fine-tunes a linear head (slf, alf) or encoder and head (aff), clean or adversarially (Madry, TRADES)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("mode", CFAMC_OPTION_STRING, "\"slf\"",
                      "\"slf\" (frozen encoder, clean head), \"alf\" (frozen encoder, adversarial head) or \"aff\" "
                      "(encoder and head trained adversarially)"),
        cfamc::option("training", CFAMC_OPTION_STRING, "\"trades\"",
                      "alf/aff: \"madry\" (cross-entropy on adversarial examples) or \"trades\" (CE + beta KL); "
                      "ignored by slf"),
        cfamc::option("beta", CFAMC_OPTION_FLOAT, "6.0", "TRADES's weight of the KL term (AdvCL: 6)"),
        cfamc::option("train_attack", CFAMC_OPTION_STRING, "\"\"",
                      "alf/aff: the id of one of this evaluator's attacks, making the training examples (madry: it "
                      "maximises CE; trades: the KL, so give pgd normal_start = 0.001, random_start = false)"),
        cfamc::option("epochs", CFAMC_OPTION_INT, "25", "passes over the training split"),
        cfamc::option("batch_size", CFAMC_OPTION_INT, "512", "images per step"),
        cfamc::option("lr", CFAMC_OPTION_FLOAT, "0.01", "initial learning rate of SGD"),
        cfamc::option("momentum", CFAMC_OPTION_FLOAT, "0.9", "SGD momentum"),
        cfamc::option("weight_decay", CFAMC_OPTION_FLOAT, "2e-4", "weight decay, on every trained tensor"),
        cfamc::option("schedule", CFAMC_OPTION_STRING, "\"multistep\"",
                      "\"multistep\" (lr x gamma at each milestone) or \"cosine\" (per epoch, to 0)"),
        cfamc::option("milestones", CFAMC_OPTION_INT_LIST, "[15, 20]", "multistep: epochs at which lr is multiplied by gamma"),
        cfamc::option("gamma", CFAMC_OPTION_FLOAT, "0.1", "multistep: the factor at each milestone"),
        cfamc::option("feature", CFAMC_OPTION_STRING, "\"backbone\"", "what the head reads: \"backbone\" or \"representation\""),
        cfamc::option("train_split", CFAMC_OPTION_STRING, "\"train\"", "the split the classifier is trained on"),
        cfamc::option("test_split", CFAMC_OPTION_STRING, "\"test\"", "the split the accuracies are measured on"),
        cfamc::option("robust_max_images", CFAMC_OPTION_INT, "0",
                      "attack only the first N test images (their clean accuracy: robust_subset/clean_accuracy); 0: all"),
        cfamc::option("robust_batch_size", CFAMC_OPTION_INT, "100", "images attacked at once when measuring"),
        cfamc::option("encode_batch_size", CFAMC_OPTION_INT, "256", "images encoded at once for clean features"),
        cfamc::option("save_classifier", CFAMC_OPTION_BOOL, "false",
                      "save encoder and head after training as the artifact classifier.pt (feature = \"backbone\")"),
        cfamc::option("attack_bn", CFAMC_OPTION_STRING, "\"eval\"",
                      "aff: the encoder's mode while the training attack runs, \"eval\" (as TRADES) or \"train\""),
    };
  }

  explicit Finetune(const cfamc::Context& ctx)
      : Evaluator(ctx),
        beta_(ctx.real("beta")),
        train_attack_(ctx.text("train_attack")),
        epochs_(ctx.integer("epochs")),
        batch_size_(ctx.integer("batch_size")),
        lr_(ctx.real("lr")),
        momentum_(ctx.real("momentum")),
        weight_decay_(ctx.real("weight_decay")),
        cosine_(ctx.text("schedule") == "cosine"),
        milestones_(ctx.integers("milestones")),
        gamma_(ctx.real("gamma")),
        train_split_(ctx.text("train_split")),
        test_split_(ctx.text("test_split")),
        robust_max_images_(ctx.integer("robust_max_images")),
        robust_batch_size_(ctx.integer("robust_batch_size")),
        encode_batch_size_(ctx.integer("encode_batch_size")),
        save_classifier_(ctx.flag("save_classifier")),
        generator_(ctx.generator()) {
    read_choices(ctx);
    check_numbers();
  }

  void evaluate(const cfamc::EvalServices& services) override {
    torch::AutoGradMode grad_mode(true);
    check_services(services);
    services.set_encoder_training(false);
    const auto [train_images, train_labels] = services.dataset(train_split_);
    const auto [test_images, test_labels] = services.dataset(test_split_);
    const int64_t classes = std::max(train_labels.max().item<int64_t>(), test_labels.max().item<int64_t>()) + 1;
    torch::nn::Linear head(services.feature_dim(feature_), classes);
    cfamc::initialise_linear_layers(*head, generator_);
    head->to(train_images.device());
    const Split train{train_images, train_labels}, test{test_images, test_labels};
    if (mode_ == Mode::slf) {
      train_clean(services, head, train);
    } else {
      train_adversarially(services, head, train);
    }
    services.set_encoder_training(false);
    services.report("epochs", static_cast<double>(epochs_));
    if (save_classifier_) {
      cfamc::TensorMap tensors;
      tensors.insert("weight", head->weight.detach());
      tensors.insert("bias", head->bias.detach());
      services.save_classifier("classifier.pt", tensors);
    }
    measure(services, head, train, test);
  }

 private:
  struct Split {
    const at::Tensor& images;  // uint8
    const at::Tensor& labels;
  };

  void read_choices(const cfamc::Context& ctx) {
    const std::string mode = ctx.text("mode"), training = ctx.text("training"), feature = ctx.text("feature");
    const std::string schedule = ctx.text("schedule"), attack_bn = ctx.text("attack_bn");
    if (!one_of(mode, {"slf", "alf", "aff"})) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "mode must be \"slf\", \"alf\" or \"aff\", not \"" + mode + "\"");
    }
    if (!one_of(training, {"madry", "trades"})) throw cfamc::Error(CFAMC_ERROR_OPTION, "training must be \"madry\" or \"trades\"");
    if (!one_of(feature, {"backbone", "representation"})) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "feature must be \"backbone\" or \"representation\"");
    }
    if (!one_of(schedule, {"multistep", "cosine"})) throw cfamc::Error(CFAMC_ERROR_OPTION, "schedule must be \"multistep\" or \"cosine\"");
    if (!one_of(attack_bn, {"eval", "train"})) throw cfamc::Error(CFAMC_ERROR_OPTION, "attack_bn must be \"eval\" or \"train\"");
    mode_ = mode == "slf" ? Mode::slf : mode == "alf" ? Mode::alf : Mode::aff;
    trades_ = training == "trades";
    feature_ = feature == "backbone" ? CFAMC_FEATURE_BACKBONE : CFAMC_FEATURE_REPRESENTATION;
    attack_in_train_mode_ = attack_bn == "train";
    // Caught when the run is assembled, before pre-training, rather than when evaluation starts.
    if (mode_ != Mode::slf && train_attack_.empty()) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "mode = \"" + mode +
                                                 "\" needs train_attack: the id of one of this evaluator's attacks, "
                                                 "which makes the training examples");
    }
    if (mode_ == Mode::slf && !train_attack_.empty()) ctx.warn("train_attack is ignored with mode = \"slf\"");
    // alf's encoder is frozen: attacking it in train mode would move its BatchNorm statistics.
    if (attack_in_train_mode_ && mode_ != Mode::aff) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "attack_bn = \"train\" needs mode = \"aff\" (slf and alf keep the encoder in eval mode)");
    }
    if (save_classifier_ && feature_ != CFAMC_FEATURE_BACKBONE) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "save_classifier needs feature = \"backbone\": the saved head reads the backbone feature");
    }
  }

  void check_numbers() const {
    if (epochs_ < 1 || batch_size_ < 1 || encode_batch_size_ < 1 || robust_batch_size_ < 1 || robust_max_images_ < 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION,
                         "epochs, batch_size, encode_batch_size and robust_batch_size must be positive, "
                         "robust_max_images not negative");
    }
    if (lr_ <= 0 || momentum_ < 0 || weight_decay_ < 0 || gamma_ <= 0 || beta_ < 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "lr and gamma must be positive; momentum, weight_decay and beta not negative");
    }
    for (size_t i = 0; i < milestones_.size(); ++i) {
      if (milestones_[i] < 1 || (i > 0 && milestones_[i] <= milestones_[i - 1])) {
        throw cfamc::Error(CFAMC_ERROR_OPTION, "milestones must be positive epochs in increasing order");
      }
    }
  }

  // What only the services can tell, checked before any training so that a bad setting costs nothing.
  void check_services(const cfamc::EvalServices& services) const {
    if (mode_ != Mode::slf) {
      const auto ids = services.attack_ids();
      if (std::find(ids.begin(), ids.end(), train_attack_) == ids.end()) {
        std::string known;
        for (const auto& id : ids) known += (known.empty() ? "" : ", ") + id;
        throw cfamc::Error(CFAMC_ERROR_OPTION, "train_attack = \"" + train_attack_ +
                                                   "\" is not one of this evaluator's attacks (have: " +
                                                   (known.empty() ? "none" : known) + ")");
      }
    }
    if (save_classifier_ && !services.can_save_classifier()) {
      throw cfamc::Error(CFAMC_ERROR_UNSUPPORTED,
                         "save_classifier = true, but this host cannot save classifiers (it predates plugin ABI 1.2)");
    }
  }

  double learning_rate(int64_t epoch) const {
    if (cosine_) return 0.5 * lr_ * (1 + std::cos(M_PI * static_cast<double>(epoch) / static_cast<double>(epochs_)));
    const auto passed = std::count_if(milestones_.begin(), milestones_.end(), [&](int64_t m) { return epoch >= m; });
    return lr_ * std::pow(gamma_, static_cast<double>(passed));
  }

  // SGD over `parameters` for `epochs` passes over n training samples in a fresh order each, the learning
  // rate set per epoch; `batch_loss` maps a minibatch's indices to its loss.
  void optimise(const std::vector<at::Tensor>& parameters, int64_t n, const torch::Device& device,
                const std::function<at::Tensor(const at::Tensor&)>& batch_loss) {
    torch::optim::SGD optimizer(parameters,
                                torch::optim::SGDOptions(lr_).momentum(momentum_).weight_decay(weight_decay_));
    for (int64_t epoch = 0; epoch < epochs_; ++epoch) {
      const double lr = learning_rate(epoch);
      for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
      const at::Tensor order = torch::randperm(n, generator_, torch::kLong).to(device);
      at::Tensor total = torch::zeros({}, torch::TensorOptions().device(device));
      for (int64_t start = 0; start < n; start += batch_size_) {
        const at::Tensor idx = order.slice(0, start, start + batch_size_);
        const at::Tensor loss = batch_loss(idx);
        // Cleared after the loss, not before: an attack inside it may have left gradients on the encoder
        // or the head by calling backward itself.
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        total += loss.detach() * static_cast<double>(idx.size(0));
      }
      context().info("finetune epoch " + std::to_string(epoch + 1) + "/" + std::to_string(epochs_) + ": lr " +
                     std::to_string(lr) + ", loss " + std::to_string(total.item<double>() / static_cast<double>(n)));
    }
    optimizer.zero_grad();  // leaves no gradients on the encoder's tensors
  }

  // slf: the features once, in eval mode, as linear_probe computes them; the head alone learns on them.
  void train_clean(const cfamc::EvalServices& services, torch::nn::Linear& head, const Split& train) {
    const at::Tensor features = clean_features(services, train.images);
    optimise(head->parameters(), features.size(0), features.device(), [&](const at::Tensor& idx) {
      return torch::nn::functional::cross_entropy(head->forward(features.index_select(0, idx)),
                                                  train.labels.index_select(0, idx));
    });
  }

  // alf and aff: each minibatch's adversarial examples made against the classifier as it is, then one step
  // on them; aff's encoder learns in train mode, alf's stays frozen in eval mode.
  void train_adversarially(const cfamc::EvalServices& services, torch::nn::Linear& head, const Split& train) {
    std::vector<at::Tensor> parameters = head->parameters();
    if (mode_ == Mode::aff) {
      const std::vector<at::Tensor> encoder = services.encoder_tensors(CFAMC_ROLE_PARAMETER);
      if (encoder.empty()) context().warn("aff: the encoder has no trainable tensors; only the head learns");
      parameters.insert(parameters.end(), encoder.begin(), encoder.end());
    }
    optimise(parameters, train.images.size(0), train.images.device(), [&](const at::Tensor& idx) {
      const at::Tensor x = train.images.index_select(0, idx).to(torch::kFloat).div(255.0);
      const at::Tensor y = train.labels.index_select(0, idx);
      services.set_encoder_training(attack_in_train_mode_);
      const at::Tensor adversarial = training_examples(services, head, x, y);
      services.set_encoder_training(mode_ == Mode::aff);
      return training_loss(services, head, x, adversarial, y);
    });
  }

  // The training attack against the per-sample loss it maximises: the cross-entropy (madry), or the KL
  // from the natural prediction, computed once in the attack's mode and held fixed (trades).
  at::Tensor training_examples(const cfamc::EvalServices& services, torch::nn::Linear& head, const at::Tensor& x,
                               const at::Tensor& y) const {
    const auto logits = [&](const cfamc::TensorMap& m) { return head->forward(services.encode(m["x"], feature_)); };
    at::Tensor natural;
    if (trades_) {
      torch::NoGradGuard no_grad;
      natural = head->forward(services.encode(x, feature_));
    }
    cfamc::FunctionOracle oracle(
        [&](const cfamc::TensorMap& m) {
          return trades_ ? per_sample_kl(natural, logits(m)) : per_sample_cross_entropy(logits(m), y);
        },
        logits, y);
    return services.attack(train_attack_, oracle.get(), x);
  }

  // madry: CE(f(x_adv), y). trades: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the KL summed over classes
  // and averaged over the batch, its gradient through both terms as in TRADES. alf's encoder runs without a
  // graph: only the head learns.
  at::Tensor training_loss(const cfamc::EvalServices& services, torch::nn::Linear& head, const at::Tensor& x,
                           const at::Tensor& adversarial, const at::Tensor& y) const {
    const auto logits = [&](const at::Tensor& images) {
      if (mode_ == Mode::aff) return head->forward(services.encode(images, feature_));
      at::Tensor features;
      {
        torch::NoGradGuard no_grad;
        features = services.encode(images, feature_);
      }
      return head->forward(features);
    };
    if (!trades_) return torch::nn::functional::cross_entropy(logits(adversarial), y);
    const at::Tensor natural = logits(x);
    return torch::nn::functional::cross_entropy(natural, y) + beta_ * per_sample_kl(natural, logits(adversarial)).mean();
  }

  // Clean accuracies, then robustness, all with the encoder in eval mode.
  void measure(const cfamc::EvalServices& services, torch::nn::Linear& head, const Split& train,
               const Split& test) const {
    const at::Tensor test_features = clean_features(services, test.images);
    services.report("accuracy", fraction(correct_predictions(head, test_features, test.labels)));
    services.report("train_accuracy",
                    fraction(correct_predictions(head, clean_features(services, train.images), train.labels)));
    const auto attacks = services.attack_ids();
    if (attacks.empty()) return;
    report_robustness(services, head, test, test_features, attacks);
  }

  // linear_probe's contract: robust accuracy under each attack and the worst case over them on the attacked
  // images alone, beside their clean accuracy and number; an image counts as robust only if it is also
  // classified correctly clean (a random start could otherwise make a clean mistake look robust).
  void report_robustness(const cfamc::EvalServices& services, torch::nn::Linear& head, const Split& test,
                         const at::Tensor& test_features, const std::vector<std::string>& attacks) const {
    const int64_t n = robust_max_images_ > 0 ? std::min(robust_max_images_, test.images.size(0)) : test.images.size(0);
    const cfamc::RowShare share = cfamc::row_share(n);  // the images this process attacks
    const at::Tensor images = test.images.slice(0, share.begin, share.end);
    const at::Tensor labels = test.labels.slice(0, share.begin, share.end);
    const at::Tensor clean_correct = correct_predictions(head, test_features.slice(0, share.begin, share.end), labels);
    services.report("robust_subset/clean_accuracy", cfamc::shared_fraction(clean_correct, n));
    services.report("robust_subset/images", static_cast<double>(n));
    at::Tensor all_correct = clean_correct;
    for (const auto& id : attacks) {
      const at::Tensor correct = robust_correct(services, head, images, labels, id).logical_and(clean_correct);
      services.report("robust_accuracy/" + id, cfamc::shared_fraction(correct, n));
      all_correct = all_correct.logical_and(correct);
    }
    if (attacks.size() > 1) services.report("robust_accuracy/worst_case", cfamc::shared_fraction(all_correct, n));
  }

  // Per image: classified correctly under attack `id`, which maximises the per-sample cross-entropy of the
  // whole classifier, end to end, in eval mode.
  at::Tensor robust_correct(const cfamc::EvalServices& services, torch::nn::Linear& head, const at::Tensor& images,
                            const at::Tensor& labels, const std::string& id) const {
    services.set_encoder_training(false);
    std::vector<at::Tensor> correct{torch::zeros({0}, labels.options().dtype(torch::kBool))};  // a share may be empty
    for (int64_t start = 0; start < images.size(0); start += robust_batch_size_) {
      const at::Tensor x = images.slice(0, start, start + robust_batch_size_).to(torch::kFloat).div(255.0);
      const at::Tensor y = labels.slice(0, start, start + robust_batch_size_);
      const auto logits = [&](const cfamc::TensorMap& m) { return head->forward(services.encode(m["x"], feature_)); };
      cfamc::FunctionOracle oracle([&](const cfamc::TensorMap& m) { return per_sample_cross_entropy(logits(m), y); },
                                   logits, y);
      const at::Tensor adversarial = services.attack(id, oracle.get(), x);
      torch::NoGradGuard no_grad;
      correct.push_back(head->forward(services.encode(adversarial, feature_)).argmax(1).eq(y));
    }
    return torch::cat(correct);
  }

  // The eval-mode features of every image: this process encodes its row_share, the shares are gathered.
  at::Tensor clean_features(const cfamc::EvalServices& services, const at::Tensor& images) const {
    torch::NoGradGuard no_grad;
    services.set_encoder_training(false);
    return cfamc::gathered_over_shares(images.size(0), encode_batch_size_, [&](int64_t begin, int64_t end) {
      return services.encode(images.slice(0, begin, end).to(torch::kFloat).div(255.0), feature_);
    });
  }

  static at::Tensor correct_predictions(torch::nn::Linear& head, const at::Tensor& features, const at::Tensor& labels) {
    torch::NoGradGuard no_grad;
    return head->forward(features).argmax(1).eq(labels);
  }

  Mode mode_ = Mode::slf;
  bool trades_ = true;
  double beta_;
  std::string train_attack_;
  int64_t epochs_, batch_size_;
  double lr_, momentum_, weight_decay_;
  bool cosine_;
  std::vector<int64_t> milestones_;
  double gamma_;
  std::string train_split_, test_split_;
  int64_t robust_max_images_, robust_batch_size_, encode_batch_size_;
  bool save_classifier_;
  bool attack_in_train_mode_ = false;
  cfamc_feature feature_ = CFAMC_FEATURE_BACKBONE;
  mutable at::Generator generator_;
};

}  // namespace

CFAMC_PLUGIN("finetune", "0.1.0", cfamc::component<Finetune>())
