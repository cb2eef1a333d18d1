// Selfie (Trinh et al. 2019) as Chen et al. (CVPR 2020) train it: the image is cut into a 4x4 grid of patches
// (8x8 on 32x32 images, size/4 on others); 4 positions are masked and 12 visible, one draw per batch as the
// reference's np.random.permutation(16) per step. Every patch is embedded by the backbone's trunk up to stage
// `patch_stage` (the reference's layer3, 1024-d on ResNet-50v2) and global average pooling; the visible
// embeddings are pooled by attention (attention_pooling.hpp) into one query per masked position, whose logits
// over the 4 masked patches are query . patch embedding; the target is the patch that was there.
//
// The loss, as the reference's patch_loss: per masked position the batch-mean cross-entropy, summed over the 4
// positions. The reference feeds softmax(logits) to a cross-entropy that applies log-softmax again;
// `double_softmax` reproduces that (off by default: it bounds the logits to [0, 1] and flattens the loss).
//
// The attack perturbs the image before it is cut, so masked and visible patches move together.
//
// Randomness: the generator it is given initialises the pooling, then draws each batch's masked positions: a
// cfamc::CheckpointedGenerator (buffer `rng.state`), so a resumed run masks what an uninterrupted one would.
#pragma once

#include <cfamc/random.hpp>
#include <cfamc/transfer.hpp>

#include "attention_pooling.hpp"
#include "pretext_terms.hpp"

namespace cfamc::pretext {

struct SelfieSettings {
  int32_t patch_stage;  // the backbone stage whose pooled output embeds a patch
  int64_t layers, heads, feedforward;
  double dropout;
  bool double_softmax;
};

class SelfieTaskImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kGrid = 4;
  static constexpr int64_t kPatches = kGrid * kGrid;
  static constexpr int64_t kMasked = kPatches / 4;
  static constexpr const char* kInput = "image";

  // `embedding_dim`: the channels of stage `patch_stage`. `role.copy` is not used: the patches run the trunk
  // only as far as the patch stage, with copy 0 of the last stage when that is the patch stage.
  SelfieTaskImpl(int64_t embedding_dim, const SelfieSettings& settings, at::Generator generator, TaskRole role)
      : role_(std::move(role)), settings_(settings) {
    if (settings.layers < 1 || settings.heads < 1 || settings.feedforward < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "layers, heads and feedforward must be positive");
    }
    if (!(settings.dropout >= 0 && settings.dropout < 1)) throw cfamc::Error(CFAMC_ERROR_OPTION, "dropout must be in [0, 1)");
    if (embedding_dim % settings.heads != 0) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "heads = " + std::to_string(settings.heads) + " must divide the " +
                                                 std::to_string(embedding_dim) + " channels of backbone stage " +
                                                 std::to_string(settings.patch_stage) + ", the patch embedding");
    }
    const PoolingShape shape{embedding_dim, kGrid, settings.layers, settings.heads, settings.feedforward, settings.dropout};
    pooling_ = register_module("pooling", AttentionPooling(shape, generator));
    rng_ = register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(generator));
  }

  // Puts the images of view group `group` (the input the attack perturbs) and this batch's masked and visible
  // positions ([N, 4] and [N, 12], the same row for every image) into `inputs`.
  void prepare(const at::Tensor& images, const std::string& group, cfamc::TensorMap& inputs) {
    if (images.dim() != 4 || images.size(2) % kGrid != 0 || images.size(3) % kGrid != 0) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT,
                         "view group '" + group + "' has images " + c10::str(images.sizes()) +
                             "; selfie's 4x4 patch grid needs a side divisible by 4: set views." + group + ".size");
    }
    at::Tensor order;
    {
      torch::NoGradGuard no_grad;
      order = cfamc::on_device_of(images, torch::randperm(kPatches, *rng_->lease(), torch::kLong));
    }
    const int64_t n = images.size(0);
    inputs.insert(kInput, images);
    inputs.insert(role_.prefix + "masked", order.slice(0, 0, kMasked).expand({n, kMasked}).contiguous());
    inputs.insert(role_.prefix + "visible", order.slice(0, kMasked).expand({n, kPatches - kMasked}).contiguous());
  }

  // The summed cross-entropy of the masked positions of `image` (the clean input or its adversarial counterpart).
  at::Tensor cross_entropy(const cfamc::Encoder& encoder, const at::Tensor& image, const cfamc::TensorMap& clean,
                           const std::string& term, cfamc::TensorMap& log) {
    const at::Tensor& masked = clean[role_.prefix + "masked"];
    const at::Tensor embeddings = patch_embeddings(encoder, image);
    const at::Tensor queries = pooling_->queries(embeddings, clean[role_.prefix + "visible"], masked);
    // Raw dot products of unnormalised embeddings reach the hundreds: in float32, or bfloat16's rounding of
    // them (about 1 in 256) would be the size of the differences the cross-entropy learns from.
    const cfamc::Float32Region float32;
    at::Tensor logits = cfamc::widened(queries).bmm(cfamc::widened(select_patches(embeddings, masked)).transpose(1, 2));
    if (settings_.double_softmax) logits = torch::softmax(logits, 2);  // [N, query, candidate]
    const at::Tensor targets = torch::arange(kMasked, masked.options()).repeat({masked.size(0)});
    return logged_cross_entropy(logits.reshape({-1, kMasked}), targets, role_, term, log, kMasked);
  }

 private:
  // [N, 16, D]: every patch through the trunk to the patch stage, globally average-pooled.
  at::Tensor patch_embeddings(const cfamc::Encoder& encoder, const at::Tensor& images) const {
    const at::Tensor features = encoder.stages(patches_of(images, kGrid), 0, settings_.patch_stage);
    return features.mean({2, 3}).view({images.size(0), kPatches, -1});
  }

  TaskRole role_;
  SelfieSettings settings_;
  AttentionPooling pooling_{nullptr};
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
};
TORCH_MODULE(SelfieTask);

}  // namespace cfamc::pretext
