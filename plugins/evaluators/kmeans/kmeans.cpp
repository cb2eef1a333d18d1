// k-means pseudo-labels, the label source of AdvCL (Fan et al. 2021): the features of one split (by
// default "pretrain", the images the run trains on, unlabeled ones included, in sample-index order) of
// whatever encoder the run evaluates are clustered for every K of a list (Lloyd's
// algorithm from k-means++ seeds, on the evaluation device), and the cluster of every image is written as an
// artifact that a later objective indexes by dataset sample index. Per K it reports the inertia, the Lloyd
// iterations run, the smallest and largest cluster and, where the split has labels, the adjusted Rand index
// of the clustering against them.
//
// The artifact (`file`, default "pseudo_labels.pt", in the evaluator's artifact folder
// <run>/artifacts/<evaluator id>/) is written by torch::pickle_save, the format of Python's torch.save:
// torch::pickle_load in C++ or torch.load in Python gives a dict (c10::Dict<std::string, at::Tensor>) with
//   "k<K>"        for every K of the option `k`, in its order, K in decimal without padding ("k2", "k500"):
//                 int64 [N], CPU, contiguous; entry i is the cluster, in [0, K), of image i of the split, i
//                 being the image's index in the dataset as loaded (the index a training run's sampler
//                 hands Objective::prepare as sample_indices; where the evaluation takes a prefix of the
//                 split, train_subset, the first N images). Cluster numbers carry no order or meaning.
//   "num_samples" int64 0-d tensor: N, the number of images of the split clustered.
// Nothing else is in the dict. The file appears whole or not at all: it is written under the name
// "<file>.partial" and renamed. pickle_save tags the dict with its type (torch.jit._pickle.restore_type_tag),
// which Python's torch.load refuses under its default weights_only=True: there, load with
// `with torch.serialization.safe_globals([torch.jit._pickle.restore_type_tag]): torch.load(path)`.
//
// Data-parallel runs: each process encodes its share of the split and gathers all features, so that every
// process clusters the same points alike; rank 0 alone writes the artifact.
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>
#include <cfamc/precision.hpp>

#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

namespace {

// Elements of one chunk's distance matrix (and of its one-hot assignment): 64 MiB of float each, whatever N.
constexpr int64_t kChunkElements = int64_t{1} << 24;

// One assignment pass: every point's nearest centre, its squared distance, and what the next centres need.
struct Sweep {
  at::Tensor labels;  // int64 [N]
  at::Tensor dist;    // float [N], squared distance to the assigned centre
  at::Tensor sums;    // float [K, D], the sum of the points assigned to each centre
  at::Tensor counts;  // int64 [K]
};

struct Clustering {
  at::Tensor labels;
  double inertia = 0;
  int64_t iterations = 0;
  bool converged = false;
};

class KMeans : public cfamc::Evaluator {
 public:
  static constexpr const char* name = "kmeans";
  static constexpr const char* summary = "k-means pseudo-labels of a split's features for a list of K (AdvCL)";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("k", CFAMC_OPTION_INT_LIST, "[2, 10, 50, 100, 500]", "numbers of clusters, one labelling each"),
        cfamc::option("feature", CFAMC_OPTION_STRING, "\"backbone\"", "\"backbone\" or \"representation\""),
        cfamc::option("normalize", CFAMC_OPTION_BOOL, "true", "L2-normalise the features before clustering"),
        cfamc::option("iterations", CFAMC_OPTION_INT, "100", "most Lloyd iterations; fewer when no label changes"),
        cfamc::option("restarts", CFAMC_OPTION_INT, "1", "independent seedings per K; the lowest inertia is kept"),
        cfamc::option("split", CFAMC_OPTION_STRING, "\"pretrain\"",
                      "the split whose images are clustered: \"pretrain\" (what training draws, by sample index), "
                      "\"train\" (its labeled images) or \"test\""),
        cfamc::option("encode_batch_size", CFAMC_OPTION_INT, "256", "images encoded at once"),
        cfamc::option("file", CFAMC_OPTION_STRING, "\"pseudo_labels.pt\"", "the artifact's file name"),
    };
  }

  explicit KMeans(const cfamc::Context& ctx)
      : Evaluator(ctx),
        ks_(ctx.integers("k")),
        normalize_(ctx.flag("normalize")),
        iterations_(ctx.integer("iterations")),
        restarts_(ctx.integer("restarts")),
        split_(ctx.text("split")),
        encode_batch_size_(ctx.integer("encode_batch_size")),
        file_(ctx.text("file")) {
    const std::string feature = ctx.text("feature");
    if (feature != "backbone" && feature != "representation") {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "feature must be \"backbone\" or \"representation\"");
    }
    feature_ = feature == "backbone" ? CFAMC_FEATURE_BACKBONE : CFAMC_FEATURE_REPRESENTATION;
    if (ks_.empty()) throw cfamc::Error(CFAMC_ERROR_OPTION, "k must name at least one number of clusters");
    for (int64_t k : ks_) {
      if (k < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "k = " + std::to_string(k) + ": every K must be at least 1");
    }
    // Each K is one key of the artifact: a repeated K would be clustered twice and written once.
    if (std::set<int64_t>(ks_.begin(), ks_.end()).size() != ks_.size()) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "k lists a number of clusters twice");
    }
    if (iterations_ < 1 || restarts_ < 1 || encode_batch_size_ < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "iterations, restarts and encode_batch_size must be at least 1");
    }
    // The artifact goes into the evaluator's own folder; a path would let it escape or collide.
    if (file_.empty() || file_.find('/') != std::string::npos || file_ == "." || file_ == "..") {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "file must be a plain file name, not \"" + file_ + "\"");
    }
  }

  // The images to cluster. A host older than the "pretrain" split named what training draws "train".
  std::pair<at::Tensor, at::Tensor> split_images(const cfamc::EvalServices& services) const {
    try {
      return services.dataset(split_);
    } catch (const cfamc::Error& e) {
      if (split_ != "pretrain" || e.code() != CFAMC_ERROR_INVALID_ARGUMENT) throw;
      context().warn("this host has no \"pretrain\" split (it predates it): clustering its \"train\" split instead");
      return services.dataset("train");
    }
  }

  void evaluate(const cfamc::EvalServices& services) override {
    services.set_encoder_training(false);
    torch::NoGradGuard no_grad;
    const auto [images, labels] = split_images(services);
    const int64_t n = images.size(0);
    // Refused before any work, so that a bad K costs no clustering of the others.
    for (int64_t k : ks_) {
      if (k > n) {
        throw cfamc::Error(CFAMC_ERROR_OPTION, "k = " + std::to_string(k) + " is more clusters than split '" + split_ +
                                                   "' has samples (" + std::to_string(n) + ")");
      }
    }
    const at::Tensor x = features(services, images);
    // |x|^2 - 2 x.c + |c|^2 cancels most of its digits: the clustering stays float32 in a bf16 run.
    const cfamc::Float32Region float32;
    const at::Tensor x2 = x.pow(2).sum(1);
    // Unlabelled splits carry -1: no adjusted Rand index for them.
    const bool labelled = labels.defined() && labels.numel() == n && labels.min().item<int64_t>() >= 0;
    // A fresh generator per call: the labels depend on the component's seed alone, not on earlier calls.
    at::Generator generator = context().generator();
    c10::Dict<std::string, at::Tensor> artifact;
    for (int64_t k : ks_) {
      const Clustering best = cluster(x, x2, k, generator);
      report(services, k, best, labelled ? labels.to(best.labels.device()) : at::Tensor());
      artifact.insert("k" + std::to_string(k), best.labels.to(torch::kCPU, torch::kLong).contiguous().clone());
    }
    artifact.insert("num_samples", torch::scalar_tensor(n, torch::kLong));
    if (cfamc::world_rank() != 0) return;  // the other processes hold the same labels; one file, one writer
    const std::string path = services.artifact_path(file_);
    write_atomically(path, torch::pickle_save(artifact));
    context().info("pseudo-labels of " + std::to_string(n) + " '" + split_ + "' images written to " + path);
  }

 private:
  // The features of every image: this process encodes its row_share, the shares are gathered.
  at::Tensor features(const cfamc::EvalServices& services, const at::Tensor& images) const {
    return cfamc::gathered_over_shares(images.size(0), encode_batch_size_, [&](int64_t begin, int64_t end) {
      return batch_features(services, images.slice(0, begin, end));
    });
  }

  at::Tensor batch_features(const cfamc::EvalServices& services, const at::Tensor& images) const {
    at::Tensor f = services.encode(images.to(torch::kFloat).div(255.0), feature_).to(torch::kFloat).flatten(1);
    // Contrastive features are compared by cosine; on the unit sphere squared distance is 2 - 2 cosine.
    if (normalize_) f = torch::nn::functional::normalize(f, torch::nn::functional::NormalizeFuncOptions().dim(1));
    return f;
  }

  // The best of `restarts_` runs by inertia; the runs draw from one generator in turn.
  Clustering cluster(const at::Tensor& x, const at::Tensor& x2, int64_t k, at::Generator& generator) const {
    Clustering best;
    for (int64_t restart = 0; restart < restarts_; ++restart) {
      Clustering run = lloyd(x, x2, seed_centres(x, x2, k, generator));
      if (restart == 0 || run.inertia < best.inertia) best = std::move(run);
    }
    return best;
  }

  // Stops at the first pass that changes no label: the centres are then the means of the labels returned.
  Clustering lloyd(const at::Tensor& x, const at::Tensor& x2, at::Tensor centres) const {
    Clustering run;
    Sweep pass;
    for (int64_t iteration = 1; iteration <= iterations_; ++iteration) {
      pass = sweep(x, x2, centres);
      run.iterations = iteration;
      if (run.labels.defined() && torch::equal(pass.labels, run.labels)) {
        run.converged = true;
        break;
      }
      run.labels = pass.labels;
      centres = next_centres(pass, x);
    }
    run.inertia = pass.dist.to(torch::kDouble).mean().item<double>();
    return run;
  }

  // k-means++ (Arthur and Vassilvitskii 2007): each new centre is a point drawn with probability proportional
  // to its squared distance to the nearest centre so far. The draw is inverse-CDF sampling with a uniform
  // from the component's (CPU) generator, so the points never leave the device and no global generator is used.
  static at::Tensor seed_centres(const at::Tensor& x, const at::Tensor& x2, int64_t k, at::Generator& generator) {
    const int64_t n = x.size(0);
    const at::Tensor first = torch::randint(n, {1}, generator, torch::kLong).to(x.device());
    std::vector<at::Tensor> centres{x.index_select(0, first)};
    at::Tensor closest = squared_distances(x, x2, centres.back());
    for (int64_t i = 1; i < k; ++i) {
      const at::Tensor cdf = closest.to(torch::kDouble).cumsum(0);
      const at::Tensor u = torch::rand({1}, generator, torch::kDouble).to(x.device());
      // right = true skips points at distance 0 (the centres themselves); clamp covers all-zero distances.
      const at::Tensor pick = torch::searchsorted(cdf, u * cdf[-1], false, true).clamp_max(n - 1);
      centres.push_back(x.index_select(0, pick));
      closest = torch::minimum(closest, squared_distances(x, x2, centres.back()));
    }
    return torch::cat(centres, 0);
  }

  // Squared distances [N] of every point to one centre [1, D].
  static at::Tensor squared_distances(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& centre) {
    return (x2 - 2 * torch::mv(x, centre.squeeze(0)) + centre.pow(2).sum()).clamp_min(0);
  }

  // Distances by |x|^2 - 2 x.c + |c|^2, one matmul per chunk of points; the centre sums by a one-hot matmul
  // too, which unlike index_add_'s atomics on a GPU adds in a fixed order, so equal seeds give equal labels.
  static Sweep sweep(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& centres) {
    const int64_t n = x.size(0), k = centres.size(0);
    const int64_t rows = std::max<int64_t>(1, kChunkElements / k);
    const at::Tensor c2 = centres.pow(2).sum(1).unsqueeze(0);
    at::Tensor sums = torch::zeros_like(centres);
    std::vector<at::Tensor> labels, dist;
    for (int64_t start = 0; start < n; start += rows) {
      const at::Tensor xs = x.slice(0, start, start + rows);
      const at::Tensor d = torch::addmm(c2, xs, centres.t(), 1, -2).add_(x2.slice(0, start, start + rows).unsqueeze(1));
      auto [nearest, label] = d.min(1);
      const at::Tensor one_hot = torch::zeros({xs.size(0), k}, x.options()).scatter_(1, label.unsqueeze(1), 1.0);
      sums.addmm_(one_hot.t(), xs);
      labels.push_back(label);
      dist.push_back(nearest.clamp_min(0));
    }
    Sweep pass{torch::cat(labels), torch::cat(dist), sums, at::Tensor()};
    pass.counts = torch::bincount(pass.labels, {}, k);
    return pass;
  }

  // The means of the clusters; a cluster left empty takes one of the points farthest from their centres
  // (the first empty cluster the farthest), which lowers the inertia most and keeps K clusters alive.
  // Done for every cluster by masks, so no count has to come back to the host.
  static at::Tensor next_centres(const Sweep& pass, const at::Tensor& x) {
    const int64_t k = pass.sums.size(0);
    const at::Tensor means = pass.sums / pass.counts.clamp_min(1).unsqueeze(1).to(pass.sums.dtype());
    const at::Tensor empty = pass.counts.eq(0);
    const at::Tensor farthest = std::get<1>(pass.dist.topk(k));
    const at::Tensor rank = empty.to(torch::kLong).cumsum(0).sub(1).clamp_min(0);
    const at::Tensor replacement = x.index_select(0, farthest.index_select(0, rank));
    return torch::where(empty.unsqueeze(1), replacement, means);
  }

  void report(const cfamc::EvalServices& services, int64_t k, const Clustering& c, const at::Tensor& truth) const {
    const std::string prefix = "k" + std::to_string(k) + "/";
    const at::Tensor sizes = torch::bincount(c.labels, {}, k);
    const int64_t smallest = sizes.min().item<int64_t>(), largest = sizes.max().item<int64_t>();
    services.report(prefix + "inertia", c.inertia);
    services.report(prefix + "iterations", static_cast<double>(c.iterations));
    services.report(prefix + "converged", c.converged ? 1.0 : 0.0);
    services.report(prefix + "cluster_size_min", static_cast<double>(smallest));
    services.report(prefix + "cluster_size_max", static_cast<double>(largest));
    std::string line = "k " + std::to_string(k) + ": inertia " + std::to_string(c.inertia) + ", " +
                       std::to_string(c.iterations) + " iterations" + (c.converged ? "" : " (not converged)") +
                       ", cluster sizes " + std::to_string(smallest) + ".." + std::to_string(largest);
    if (truth.defined()) {
      const double ari = adjusted_rand_index(c.labels, k, truth);
      services.report(prefix + "adjusted_rand_index", ari);
      line += ", adjusted Rand index " + std::to_string(ari);
    }
    if (smallest == 0) context().warn(line + ": empty clusters (fewer distinct features than K?)");
    context().info(line);
  }

  // Hubert and Arabie's adjusted Rand index from the contingency table, built on the device by one bincount.
  // 1 where the index is undefined (both labellings a single cluster), as scikit-learn has it.
  static double adjusted_rand_index(const at::Tensor& clusters, int64_t k, const at::Tensor& truth) {
    const int64_t classes = truth.max().item<int64_t>() + 1, n = clusters.size(0);
    const at::Tensor table =
        torch::bincount(clusters * classes + truth, {}, k * classes).to(torch::kDouble).view({k, classes});
    const auto pairs = [](const at::Tensor& counts) { return (counts * (counts - 1) / 2).sum(); };
    const at::Tensor sums = torch::stack({pairs(table), pairs(table.sum(1)), pairs(table.sum(0))}).cpu();
    const double index = sums[0].item<double>(), rows = sums[1].item<double>(), cols = sums[2].item<double>();
    const double total = static_cast<double>(n) * static_cast<double>(n - 1) / 2;
    if (total == 0) return 1.0;
    const double expected = rows * cols / total, maximum = (rows + cols) / 2;
    if (maximum == expected) return 1.0;
    return (index - expected) / (maximum - expected);
  }

  static void write_atomically(const std::string& path, const std::vector<char>& bytes) {
    const std::filesystem::path target(path), partial(path + ".partial");
    std::filesystem::create_directories(target.parent_path());
    {
      std::ofstream out(partial, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      out.close();
      if (!out) throw cfamc::Error(CFAMC_ERROR_RUNTIME, "could not write " + partial.string());
    }
    std::filesystem::rename(partial, target);
  }

  std::vector<int64_t> ks_;
  bool normalize_;
  int64_t iterations_, restarts_;
  std::string split_;
  int64_t encode_batch_size_;
  std::string file_;
  cfamc_feature feature_ = CFAMC_FEATURE_BACKBONE;
};

}  // namespace

CFAMC_PLUGIN("kmeans", "0.1.0", cfamc::component<KMeans>())
