// Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as EMP-SSL reports it):
// cosine similarity to every training feature, the k most similar vote with weight exp(sim / T).
// Data-parallel runs: each process encodes its share of the training split and gathers the whole bank, then
// classifies its share of the test split; the correct counts are summed.
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>
#include <cfamc/precision.hpp>

#include <torch/torch.h>

namespace {

class KNN : public cfamc::Evaluator {
 public:
  static constexpr const char* name = "knn";
  static constexpr const char* summary = "weighted kNN top-1 accuracy on frozen, L2-normalised features";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("k", CFAMC_OPTION_INT, "20", "neighbours that vote"),
        cfamc::option("temperature", CFAMC_OPTION_FLOAT, "0.07", "vote weight exp(cosine / temperature)"),
        cfamc::option("feature", CFAMC_OPTION_STRING, "\"backbone\"", "\"backbone\" or \"representation\""),
        cfamc::option("batch_size", CFAMC_OPTION_INT, "256", "images encoded at once"),
        cfamc::option("train_split", CFAMC_OPTION_STRING, "\"train\"", "the split that holds the neighbours"),
        cfamc::option("test_split", CFAMC_OPTION_STRING, "\"test\"", "the split that is classified"),
    };
  }

  explicit KNN(const cfamc::Context& ctx)
      : Evaluator(ctx),
        k_(ctx.integer("k")),
        temperature_(ctx.real("temperature")),
        batch_size_(ctx.integer("batch_size")),
        train_split_(ctx.text("train_split")),
        test_split_(ctx.text("test_split")) {
    const std::string feature = ctx.text("feature");
    if (feature != "backbone" && feature != "representation") {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "feature must be \"backbone\" or \"representation\"");
    }
    feature_ = feature == "backbone" ? CFAMC_FEATURE_BACKBONE : CFAMC_FEATURE_REPRESENTATION;
    if (k_ < 1 || temperature_ <= 0 || batch_size_ < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "k, temperature and batch_size must be positive");
    }
  }

  void evaluate(const cfamc::EvalServices& services) override {
    if (!services.attack_ids().empty()) {
      context().warn("kNN's top-k vote has no gradient to attack; robust accuracy comes from linear_probe or multicrop");
    }
    services.set_encoder_training(false);
    torch::NoGradGuard no_grad;
    const auto [train_images, train_labels] = services.dataset(train_split_);
    const auto [test_images, test_labels] = services.dataset(test_split_);
    const auto encoded = [&](int64_t begin, int64_t end) { return features(services, train_images, begin, end); };
    const at::Tensor bank = cfamc::gathered_over_shares(train_images.size(0), batch_size_, encoded);
    const int64_t classes = train_labels.max().item<int64_t>() + 1;
    const int64_t k = std::min<int64_t>(k_, bank.size(0));

    const cfamc::RowShare queries = cfamc::row_share(test_images.size(0));
    at::Tensor correct = torch::zeros({}, test_labels.options().dtype(torch::kLong));
    for (int64_t start = queries.begin; start < queries.end; start += batch_size_) {
      const int64_t end = std::min(queries.end, start + batch_size_);
      const at::Tensor query = features(services, test_images, start, end);
      // Similarities divided by a temperature of 0.07 and exponentiated: float32 in a bf16 run.
      const cfamc::Float32Region float32;
      const auto [similarity, index] = torch::matmul(cfamc::widened(query), cfamc::widened(bank).t()).topk(k, 1);
      const at::Tensor weights = (similarity / temperature_).exp();
      const at::Tensor votes = torch::zeros({query.size(0), classes}, weights.options())
                                   .scatter_add_(1, train_labels.index({index}), weights);
      correct += votes.argmax(1).eq(test_labels.slice(0, start, end)).sum();
    }
    const double accuracy = cfamc::shared_fraction(correct, test_images.size(0));
    services.report("accuracy", accuracy);
    context().info("top-1 " + std::to_string(accuracy) + " (k " + std::to_string(k) + ")");
  }

 private:
  // The unit-norm features of images [begin, end), encoded at once.
  at::Tensor features(const cfamc::EvalServices& services, const at::Tensor& images, int64_t begin, int64_t end) const {
    const at::Tensor x = images.slice(0, begin, end).to(torch::kFloat).div(255.0);
    return torch::nn::functional::normalize(services.encode(x, feature_),
                                            torch::nn::functional::NormalizeFuncOptions().dim(1));
  }

  int64_t k_;
  double temperature_;
  int64_t batch_size_;
  std::string train_split_, test_split_;
  cfamc_feature feature_ = CFAMC_FEATURE_BACKBONE;
};

}  // namespace

CFAMC_PLUGIN("knn", "0.1.0", cfamc::component<KNN>())
