// Jigsaw as Chen et al. (CVPR 2020) train it: each image is cut into a 4x4 grid of tiles (8x8 on 32x32 images,
// size/4 on others), the tiles are reordered by one of `permutations` + 1 orders and a linear head on the
// backbone feature predicts which. Class 0 is the identity, drawn with probability `identity_probability`; the
// others are drawn uniformly.
//
// Orders: tiles are numbered row-major; order o puts input tile o[j] at position j (the reference's
// new_tiles[j] = tiles[permutation[j]]). The non-identity orders are drawn at create from the generator,
// distinct from each other and from the identity, and kept as the buffer `tile_orders` [classes, 16], so they
// travel with the trained head in every checkpoint.
//
// The reference draws the class uniformly from all 31 and then replaces it by the identity with probability
// 0.1, so its identity rate is 0.1 + 0.9/31; here the identity's probability is exactly the option's.
//
// Randomness: the generator it is given draws the orders, then initialises the head, then draws each batch's
// classes: a cfamc::CheckpointedGenerator (buffer `rng.state`) from there on, so a resumed run draws the
// classes an uninterrupted one would.
#pragma once

#include <cfamc/random.hpp>
#include <cfamc/transfer.hpp>

#include <set>

#include "pretext_terms.hpp"

namespace cfamc::pretext {

class JigsawTaskImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kGrid = 4;
  static constexpr int64_t kTiles = kGrid * kGrid;
  static constexpr int64_t kMostPermutations = 1000;
  static constexpr const char* kInput = "shuffled";

  JigsawTaskImpl(int64_t feature_dim, int64_t permutations, double identity_probability, at::Generator generator,
                 TaskRole role)
      : role_(std::move(role)), identity_probability_(identity_probability) {
    if (permutations < 1 || permutations > kMostPermutations) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "permutations must be between 1 and " + std::to_string(kMostPermutations));
    }
    if (!(identity_probability_ >= 0 && identity_probability_ <= 1)) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "identity_probability must be in [0, 1]");
    }
    if (feature_dim < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "the backbone feature dim must be positive");
    tile_orders_ = register_buffer("tile_orders", draw_tile_orders(permutations, generator));
    head_ = register_module("head", torch::nn::Linear(feature_dim, permutations + 1));
    cfamc::initialise_linear_layers(*this, generator);
    rng_ = register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(generator));
  }

  // Puts the shuffled images of view group `group` and their labels into `inputs`.
  void prepare(const at::Tensor& images, const std::string& group, cfamc::TensorMap& inputs) {
    if (images.dim() != 4 || images.size(2) % kGrid != 0 || images.size(3) % kGrid != 0) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "view group '" + group + "' has images " + c10::str(images.sizes()) +
                             "; the 4x4 tile grid needs a side divisible by 4: set views." + group + ".size");
    }
    const at::Tensor labels = cfamc::on_device_of(images, draw_labels(images.size(0)));
    inputs.insert(kInput, shuffle_tiles(images, tile_orders_.index_select(0, labels)));
    inputs.insert(label_name(), labels);
  }

  // The cross-entropy of the head on `shuffled` (the clean input or its adversarial counterpart).
  at::Tensor cross_entropy(const cfamc::Encoder& encoder, const at::Tensor& shuffled, const cfamc::TensorMap& clean,
                           const std::string& term, cfamc::TensorMap& log) {
    return logged_cross_entropy(head_->forward(feature_of(encoder, shuffled, role_)), clean[label_name()], role_, term,
                                log);
  }

 private:
  std::string label_name() const { return role_.prefix + "label"; }

  // The identity, then `count` distinct orders of the 16 tiles other than it, from `generator`.
  static at::Tensor draw_tile_orders(int64_t count, at::Generator& generator) {
    std::vector<at::Tensor> orders{torch::arange(kTiles, torch::kLong)};
    std::set<std::vector<int64_t>> seen{std::vector<int64_t>(orders[0].data_ptr<int64_t>(),
                                                             orders[0].data_ptr<int64_t>() + kTiles)};
    while (static_cast<int64_t>(orders.size()) < count + 1) {
      const at::Tensor order = torch::randperm(kTiles, generator, torch::kLong);
      const int64_t* first = order.data_ptr<int64_t>();
      if (seen.insert(std::vector<int64_t>(first, first + kTiles)).second) orders.push_back(order);
    }
    return torch::stack(orders, 0);
  }

  // Each image's tiles (a kGrid x kGrid grid, row-major) reordered so that tile j of image i is its tile
  // orders[i][j]. Pure indexing, on the images' device, differentiable in the images.
  static at::Tensor shuffle_tiles(const at::Tensor& images, const at::Tensor& orders) {
    const int64_t n = images.size(0), c = images.size(1), th = images.size(2) / kGrid, tw = images.size(3) / kGrid;
    const at::Tensor tiles =
        images.reshape({n, c, kGrid, th, kGrid, tw}).permute({0, 2, 4, 1, 3, 5}).reshape({n, kTiles, c, th, tw});
    const at::Tensor moved = tiles.gather(1, orders.view({n, kTiles, 1, 1, 1}).expand_as(tiles));
    return moved.reshape({n, kGrid, kGrid, c, th, tw}).permute({0, 3, 1, 4, 2, 5}).reshape(images.sizes());
  }

  // Class 0 with probability identity_probability_, else uniform over 1..permutations, from the checkpointed
  // stream, which it advances.
  at::Tensor draw_labels(int64_t batch) {
    torch::NoGradGuard no_grad;
    const auto generator = rng_->lease();
    const at::Tensor keep = torch::rand({batch}, *generator, torch::kDouble).lt(identity_probability_);
    const at::Tensor shuffled = torch::randint(1, tile_orders_.size(0), {batch}, *generator, torch::kLong);
    return torch::where(keep, torch::zeros_like(shuffled), shuffled);
  }

  TaskRole role_;
  double identity_probability_;
  torch::nn::Linear head_{nullptr};
  at::Tensor tile_orders_;
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
};
TORCH_MODULE(JigsawTask);

}  // namespace cfamc::pretext
