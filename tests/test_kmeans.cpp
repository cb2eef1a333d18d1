// The kmeans evaluator (AdvCL's pseudo-labels) on synthetic clusters: the host's pixel encoder makes an image's
// pixels its feature, so images whose pixels are points of well-separated Gaussian blobs are clusters the
// evaluator must recover. The adjusted Rand index is recomputed here by pair counting, independently of the
// plugin's contingency-table formula.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize.h>

#include <fstream>
#include <iterator>

#include "config/options.hpp"
#include "eval/eval_services.hpp"
#include "make_component.hpp"
#include "plugins/components.hpp"
#include "support.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

constexpr int64_t kPoints = 200, kBlobs = 5;

// kPoints images [1, 4, 4] (16-d points) around kBlobs random centres, noise 5/255 per pixel; point i belongs
// to blob i % kBlobs, which is also its label.
DatasetSplit blobs() {
  at::Generator generator = at::detail::createCPUGenerator(7);
  const at::Tensor centres = 0.1 + 0.8 * torch::rand({kBlobs, 16}, generator);
  const at::Tensor truth = torch::arange(kPoints, torch::kLong).remainder(kBlobs);
  const at::Tensor points = centres.index_select(0, truth) + 0.02 * torch::randn({kPoints, 16}, generator);
  return DatasetSplit{points.mul(255).round().clamp(0, 255).to(torch::kUInt8).view({kPoints, 1, 4, 4}), truth};
}

std::unique_ptr<Evaluator> kmeans(const std::string& toml, uint64_t seed = 1234) {
  const ComponentInfo& info = cfamc::test::registry().find(CFAMC_KIND_EVALUATOR, "kmeans");
  ComponentSetup setup{"kmeans", resolve_options(toml::parse(toml), info.options, "kmeans", "test"), seed, "cpu", 0};
  return instantiate<Evaluator>(cfamc::test::registry(), info, std::move(setup));
}

// Runs the evaluator on the blobs (the "pretrain" split, the one it clusters by default); its metrics, the
// artifact in `dir`.
nlohmann::json run(const Evaluator& evaluator, const cfamc::test::TempDir& dir) {
  EvalServices services(pixel_encoder({1, 4, 4}), {{"pretrain", blobs()}}, {}, dir.path());
  evaluator.evaluate(*services.get());
  return services.metrics();
}

c10::Dict<c10::IValue, c10::IValue> load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes).toGenericDict();
}

at::Tensor labels_for(const c10::Dict<c10::IValue, c10::IValue>& artifact, int64_t k) {
  return artifact.at("k" + std::to_string(k)).toTensor();
}

// Hubert and Arabie's ARI by counting pairs of points: together or apart in each labelling.
double pair_counting_ari(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.accessor<int64_t, 1>(), y = b.accessor<int64_t, 1>();
  double both = 0, only_a = 0, only_b = 0, neither = 0;
  for (int64_t i = 0; i < a.size(0); ++i) {
    for (int64_t j = i + 1; j < a.size(0); ++j) {
      const bool same_a = x[i] == x[j], same_b = y[i] == y[j];
      (same_a ? (same_b ? both : only_a) : (same_b ? only_b : neither)) += 1;
    }
  }
  return 2 * (neither * both - only_a * only_b) /
         ((neither + only_a) * (only_a + both) + (neither + only_b) * (only_b + both));
}

// Labels in [0, k) and, on the blobs, no cluster empty.
void check_valid(const at::Tensor& labels, int64_t k) {
  REQUIRE(labels.size(0) == kPoints);
  CHECK(labels.min().item<int64_t>() >= 0);
  CHECK(labels.max().item<int64_t>() < k);
  CHECK(torch::bincount(labels, {}, k).min().item<int64_t>() > 0);
}

}  // namespace

TEST_CASE("kmeans recovers well-separated clusters", "[kmeans]") {
  cfamc::test::TempDir dir;
  const nlohmann::json metrics = run(*kmeans("k = [5, 10]"), dir);
  const auto artifact = load(dir.path() / "pseudo_labels.pt");
  const at::Tensor truth = blobs().labels;
  const at::Tensor five = labels_for(artifact, 5);
  check_valid(five, 5);
  CHECK(pair_counting_ari(five, truth) > 0.99);
  CHECK(metrics.at("k5").at("adjusted_rand_index").get<double>() > 0.99);
  CHECK(metrics.at("k5").at("converged").get<double>() == 1);
  CHECK(metrics.at("k5").at("cluster_size_min").get<double>() == kPoints / kBlobs);
  CHECK(metrics.at("k5").at("cluster_size_max").get<double>() == kPoints / kBlobs);
  // Ten clusters split the blobs: a Rand index below 1, where both formulas must still agree.
  const double ten = pair_counting_ari(labels_for(artifact, 10), truth);
  CHECK(ten < 0.99);
  CHECK(metrics.at("k10").at("adjusted_rand_index").get<double>() == Approx(ten).epsilon(1e-9));
  // Splitting clusters lowers the inertia.
  const double inertia5 = metrics.at("k5").at("inertia").get<double>();
  CHECK(inertia5 > 0);
  CHECK(metrics.at("k10").at("inertia").get<double>() < inertia5);
}

TEST_CASE("kmeans labels depend on the component seed alone", "[kmeans]") {
  cfamc::test::TempDir first, again, other;
  const auto evaluator = kmeans("k = [3, 5]\nrestarts = 2");
  run(*evaluator, first);
  run(*evaluator, again);  // the same component once more: a fresh generator from its seed
  run(*kmeans("k = [3, 5]\nrestarts = 2", 99), other);
  const auto a = load(first.path() / "pseudo_labels.pt"), b = load(again.path() / "pseudo_labels.pt");
  const auto c = load(other.path() / "pseudo_labels.pt");
  for (int64_t k : {3, 5}) {
    INFO("k " << k);
    CHECK(torch::equal(labels_for(a, k), labels_for(b, k)));
    check_valid(labels_for(c, k), k);
  }
  CHECK(pair_counting_ari(labels_for(c, 5), blobs().labels) > 0.99);
  // The seed is used: the other seeding finds the same blobs, numbered in another order.
  CHECK_FALSE(torch::equal(labels_for(a, 5), labels_for(c, 5)));
  // The same run again from an identical component of the same seed.
  cfamc::test::TempDir twin;
  run(*kmeans("k = [3, 5]\nrestarts = 2"), twin);
  CHECK(torch::equal(labels_for(a, 3), labels_for(load(twin.path() / "pseudo_labels.pt"), 3)));
}

TEST_CASE("kmeans writes one label per sample for every K, whole", "[kmeans]") {
  cfamc::test::TempDir dir;
  run(*kmeans("k = [1, 2, 7, 200]\nfile = \"labels.pt\"\nnormalize = false\nfeature = \"representation\""), dir);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "labels.pt.partial"));
  const auto artifact = load(dir.path() / "labels.pt");
  CHECK(artifact.size() == 5);
  const at::Tensor n = artifact.at("num_samples").toTensor();
  CHECK(n.dim() == 0);
  CHECK(n.scalar_type() == torch::kLong);
  CHECK(n.item<int64_t>() == kPoints);
  for (int64_t k : {1, 2, 7, 200}) {
    INFO("k " << k);
    const at::Tensor labels = labels_for(artifact, k);
    CHECK(labels.scalar_type() == torch::kLong);
    CHECK(labels.sizes() == at::IntArrayRef({kPoints}));
    CHECK(labels.min().item<int64_t>() >= 0);
    CHECK(labels.max().item<int64_t>() < k);
  }
  // K = N: every point its own cluster (the points are distinct).
  CHECK(torch::bincount(labels_for(artifact, 200), {}, 200).max().item<int64_t>() == 1);
}

TEST_CASE("kmeans refuses a K above the sample count and bad options", "[kmeans]") {
  cfamc::test::TempDir dir;
  const auto too_many = kmeans("k = [5, 300]");
  try {
    run(*too_many, dir);
    FAIL("k = 300 on 200 samples was accepted");
  } catch (const std::exception& e) {
    CHECK_THAT(std::string(e.what()), Contains("k = 300") && Contains("(200)"));
  }
  CHECK_FALSE(std::filesystem::exists(dir.path() / "pseudo_labels.pt"));

  CHECK_THROWS_WITH(kmeans("k = []"), Contains("at least one"));
  CHECK_THROWS_WITH(kmeans("k = [4, 0]"), Contains("k = 0"));
  CHECK_THROWS_WITH(kmeans("k = [4, 4]"), Contains("twice"));
  CHECK_THROWS_WITH(kmeans("iterations = 0"), Contains("iterations"));
  CHECK_THROWS_WITH(kmeans("restarts = 0"), Contains("restarts"));
  CHECK_THROWS_WITH(kmeans("feature = \"logits\""), Contains("feature"));
  CHECK_THROWS_WITH(kmeans("file = \"../labels.pt\""), Contains("plain file name"));
}
