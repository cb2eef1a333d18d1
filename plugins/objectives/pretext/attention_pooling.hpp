// Selfie's patch geometry and attention pooling (Trinh et al. 2019, as Chen et al. CVPR 2020's reference builds
// it): the image cut into a grid x grid of patches, and a summary of the visible patches' embeddings from a
// learned summary token run through transformer encoder layers with them (LibTorch's post-norm
// TransformerEncoderLayer, as the reference's layers). The query for a masked position is the summary plus
// the embeddings of its row and its column. Plain LibTorch, without the plugin SDK, so tests can drive it.
//
// The reference's SelfieModel: summary token u0 and column embeddings start at 0, row embeddings ~ N(0, 1);
// the visible patches carry no position embedding of their own. Its own transformer layers are initialised
// each from PyTorch's defaults; here every layer is drawn from the generator it is given, so initialisation
// depends on the run's seed alone.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <string>

namespace cfamc::pretext {

// Patches [N * grid * grid, C, H / grid, W / grid] of images [N, C, H, W]: image-major, then row-major.
inline at::Tensor patches_of(const at::Tensor& images, int64_t grid) {
  const int64_t n = images.size(0), c = images.size(1), ph = images.size(2) / grid, pw = images.size(3) / grid;
  return images.reshape({n, c, grid, ph, grid, pw}).permute({0, 2, 4, 1, 3, 5}).reshape({n * grid * grid, c, ph, pw});
}

// Rows `positions` [N, K] of `embeddings` [N, P, D], image by image: [N, K, D].
inline at::Tensor select_patches(const at::Tensor& embeddings, const at::Tensor& positions) {
  const at::Tensor index = positions.unsqueeze(2).expand({-1, -1, embeddings.size(2)});
  return embeddings.gather(1, index);
}

struct PoolingShape {
  int64_t dim;          // the patch embedding's width (the transformer's d_model)
  int64_t grid;         // patches per row and per column
  int64_t layers;       // transformer encoder layers
  int64_t heads;        // attention heads; must divide dim
  int64_t feedforward;  // width of each layer's feed-forward network
  double dropout;
};

class AttentionPoolingImpl : public torch::nn::Module {
 public:
  AttentionPoolingImpl(const PoolingShape& shape, at::Generator& generator) : grid_(shape.grid) {
    namespace nn = torch::nn;
    const auto layer = nn::TransformerEncoderLayer(nn::TransformerEncoderLayerOptions(shape.dim, shape.heads)
                                                       .dim_feedforward(shape.feedforward)
                                                       .dropout(shape.dropout));
    encoder_ = register_module("encoder", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, shape.layers)));
    summary_token_ = register_parameter("summary_token", torch::zeros({1, 1, shape.dim}));
    row_embeddings_ = register_parameter("row_embeddings", torch::randn({shape.grid, shape.dim}, generator));
    column_embeddings_ = register_parameter("column_embeddings", torch::zeros({shape.grid, shape.dim}));
    initialise(generator);
  }

  // The summary [N, D] of the visible patches' embeddings [N, V, D]: the summary token's output after the
  // transformer layers over [token, visible patches].
  at::Tensor summary(const at::Tensor& visible) {
    const at::Tensor token = summary_token_.expand({visible.size(0), 1, visible.size(2)});
    const at::Tensor sequence = torch::cat({token, visible}, 1).transpose(0, 1);  // [1 + V, N, D]
    return encoder_->forward(sequence)[0];
  }

  // The query [N, M, D] for each masked position from the patch embeddings [N, P, D]: only the rows `visible`
  // [N, V] reach the transformer; the masked positions [N, M] add their row and column embeddings.
  at::Tensor queries(const at::Tensor& embeddings, const at::Tensor& visible, const at::Tensor& masked) {
    const at::Tensor pooled = summary(select_patches(embeddings, visible));
    const at::Tensor rows = row_embeddings_.index_select(0, masked.div(grid_, "floor").reshape(-1));
    const at::Tensor columns = column_embeddings_.index_select(0, masked.remainder(grid_).reshape(-1));
    return pooled.unsqueeze(1) + (rows + columns).view({masked.size(0), masked.size(1), -1});
  }

 private:
  // PyTorch's defaults, drawn from `generator`: Linear U(+-1/sqrt(in)) for weight and bias, attention input
  // projections Xavier-uniform with zero bias, the attention output projection's bias zero; LayerNorm 1 and 0.
  void initialise(at::Generator& generator) {
    torch::NoGradGuard no_grad;
    for (auto& module : modules(/*include_self=*/false)) {
      if (auto* linear = module->as<torch::nn::Linear>()) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(linear->options.in_features()));
        linear->weight.uniform_(-bound, bound, generator);
        linear->bias.uniform_(-bound, bound, generator);
      } else if (auto* attention = module->as<torch::nn::MultiheadAttention>()) {
        const double fan = static_cast<double>(attention->in_proj_weight.size(0) + attention->in_proj_weight.size(1));
        const double bound = std::sqrt(6.0 / fan);
        attention->in_proj_weight.uniform_(-bound, bound, generator);
        attention->in_proj_bias.zero_();
      }
    }
    // After the Linear pass: the output projection is one of the Linears it visited.
    for (auto& module : modules(/*include_self=*/false))
      if (auto* attention = module->as<torch::nn::MultiheadAttention>()) attention->out_proj->bias.zero_();
  }

  int64_t grid_;
  torch::nn::TransformerEncoder encoder_{nullptr};
  at::Tensor summary_token_, row_embeddings_, column_embeddings_;
};
TORCH_MODULE(AttentionPooling);

}  // namespace cfamc::pretext
