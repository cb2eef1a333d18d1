// A small convolutional backbone for CPU runs and tests: three conv-BN-ReLU blocks, each followed by a
// 2x2 max-pool, then global average pooling. Several BatchNorm sets can be selected per forward.
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cmath>

namespace {

class ConvNet : public cfamc::Backbone {
 public:
  static constexpr const char* name = "convnet";
  static constexpr const char* summary = "small CNN: 3 conv-BN-ReLU-maxpool blocks + global average pool";
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("in_channels", CFAMC_OPTION_INT, "3", "channels of the input images"),
        cfamc::option("width", CFAMC_OPTION_INT, "32", "channels of the first block; doubled by each block"),
        cfamc::option("branches", CFAMC_OPTION_INT, "1", "BatchNorm sets selectable per forward"),
        cfamc::option("mean", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel mean subtracted inside forward; [] for none"),
        cfamc::option("std", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel std divided inside forward; [] for none"),
    };
  }

  explicit ConvNet(const cfamc::Context& ctx)
      : Backbone(ctx), in_channels_(ctx.integer("in_channels")), width_(ctx.integer("width")) {
    const int64_t branches = ctx.integer("branches");
    if (in_channels_ < 1 || width_ < 1 || branches < 1) {
      throw cfamc::Error(CFAMC_ERROR_OPTION, "in_channels, width and branches must be positive");
    }
    normalise_ = register_module("normalise", cfamc::PixelNormalisation(in_channels_, ctx.reals("mean"), ctx.reals("std")));
    at::Generator generator = ctx.generator();
    int64_t channels = in_channels_;
    for (int block = 0; block < 3; ++block) {
      const int64_t out = width_ << block;
      auto conv = register_module("conv" + std::to_string(block),
                                  torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, out, 3).padding(1).bias(false)));
      // kaiming_normal_(fan_out, relu) drawn from this component's own generator.
      const double stddev = std::sqrt(2.0 / static_cast<double>(out * 9));
      {
        torch::NoGradGuard no_grad;
        conv->weight.normal_(0.0, stddev, generator);
      }
      convs_.push_back(conv);
      auto norms = register_module("bn" + std::to_string(block), torch::nn::ModuleList());
      for (int64_t b = 0; b < branches; ++b) norms->push_back(cfamc::BatchNorm(out));
      norms_.push_back(norms);
      channels = out;
    }
    num_branches_ = static_cast<int32_t>(branches);
    to(ctx.device());
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) override {
    if (x.dim() != 4 || x.size(1) != in_channels_ || !x.is_floating_point()) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "convnet: expected float images [N, " +
                                                           std::to_string(in_channels_) + ", H, W], got " +
                                                           c10::str(x.sizes()) + " " + c10::str(x.scalar_type()));
    }
    if (branch < 0 || branch >= num_branches_) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "convnet: no BatchNorm branch " + std::to_string(branch));
    }
    at::Tensor h = normalise_->forward(x);
    for (size_t block = 0; block < convs_.size(); ++block) {
      h = convs_[block]->forward(h);
      h = norms_[block]->ptr(branch)->as<cfamc::BatchNormImpl>()->forward(h);
      h = torch::max_pool2d(torch::relu(h), 2, 2, 0, 1, /*ceil_mode=*/true);
    }
    return h.mean({2, 3});
  }

  int64_t feature_dim() const override { return width_ << 2; }
  int32_t num_branches() const override { return num_branches_; }

 private:
  int64_t in_channels_;
  int64_t width_;
  int32_t num_branches_ = 1;
  std::vector<torch::nn::Conv2d> convs_;
  std::vector<torch::nn::ModuleList> norms_;
  cfamc::PixelNormalisation normalise_{nullptr};
};

}  // namespace

CFAMC_PLUGIN("convnet", "0.1.0", cfamc::component<ConvNet>())
