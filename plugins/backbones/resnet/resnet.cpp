// ResNets for small images, torchvision's definitions with the CIFAR stem (3x3 stride-1 conv, no max-pool):
// resnet18 and resnet34 (basic blocks), resnet50 (bottlenecks); the pre-activation family (He et al. 2016):
// preact_resnet18 (fast/free adversarial training), resnet50v2 (Adv-SS pre-training) and wrn34_10
// (WideResNet-34-10, the RobustBench standard). Every BatchNorm exists once per branch, selected per
// forward; normalisation happens inside; the output is the globally pooled feature (no classifier).
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cmath>

namespace {

namespace nn = torch::nn;

// One BatchNorm per branch (AdvCL uses 3 sets, ACL 2).
class BranchedBatchNormImpl : public nn::Module {
 public:
  BranchedBatchNormImpl(int64_t channels, int64_t branches) {
    for (int64_t b = 0; b < branches; ++b) norms_.push_back(register_module(std::to_string(b), nn::BatchNorm2d(channels)));
  }
  at::Tensor forward(const at::Tensor& x, int32_t branch) { return norms_[branch]->forward(x); }

 private:
  std::vector<nn::BatchNorm2d> norms_;
};
TORCH_MODULE(BranchedBatchNorm);

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

// A residual block: `basic` (two 3x3 convs), `bottleneck` (1x1, 3x3, 1x1 with 4x expansion), or their
// pre-activation forms `preact` and `preact_bottleneck` (BN-ReLU before each conv; the shortcut, where the
// shape changes, takes the pre-activated input).
class BlockImpl : public nn::Module {
 public:
  enum class Kind { basic, bottleneck, preact, preact_bottleneck };
  static bool bottleneck(Kind kind) { return kind == Kind::bottleneck || kind == Kind::preact_bottleneck; }
  static bool preactivated(Kind kind) { return kind == Kind::preact || kind == Kind::preact_bottleneck; }
  static int64_t expansion(Kind kind) { return bottleneck(kind) ? 4 : 1; }

  BlockImpl(Kind kind, int64_t in, int64_t planes, int64_t stride, int64_t branches) : kind_(kind) {
    const int64_t out = planes * expansion(kind);
    const bool pre = preactivated(kind);
    if (bottleneck(kind)) {
      convs_ = {conv(in, planes, 1, 1), conv(planes, planes, 3, stride), conv(planes, out, 1, 1)};
      norms_ = {BranchedBatchNorm(pre ? in : planes, branches), BranchedBatchNorm(planes, branches),
                BranchedBatchNorm(pre ? planes : out, branches)};
    } else {
      convs_ = {conv(in, planes, 3, stride), conv(planes, planes, 3, 1)};
      norms_ = {BranchedBatchNorm(pre ? in : planes, branches), BranchedBatchNorm(planes, branches)};
    }
    for (size_t i = 0; i < convs_.size(); ++i) {
      register_module("conv" + std::to_string(i + 1), convs_[i]);
      register_module("bn" + std::to_string(i + 1), norms_[i]);
    }
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut", conv(in, out, 1, stride));
      if (!pre) shortcut_norm_ = register_module("shortcut_bn", BranchedBatchNorm(out, branches));
    }
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    if (preactivated(kind_)) {
      const at::Tensor pre = torch::relu(norms_[0]->forward(x, branch));
      const at::Tensor identity = shortcut_ ? shortcut_->forward(pre) : x;
      at::Tensor h = convs_[0]->forward(pre);
      for (size_t i = 1; i < convs_.size(); ++i) h = convs_[i]->forward(torch::relu(norms_[i]->forward(h, branch)));
      return h + identity;
    }
    at::Tensor h = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      h = norms_[i]->forward(convs_[i]->forward(h), branch);
      if (i + 1 < convs_.size()) h = torch::relu(h);
    }
    const at::Tensor identity = shortcut_ ? shortcut_norm_->forward(shortcut_->forward(x), branch) : x;
    return torch::relu(h + identity);
  }

 private:
  Kind kind_;
  std::vector<nn::Conv2d> convs_;
  std::vector<BranchedBatchNorm> norms_;
  nn::Conv2d shortcut_{nullptr};
  BranchedBatchNorm shortcut_norm_{nullptr};
};
TORCH_MODULE(Block);

// Stages of `blocks[i]` blocks of `planes[i]` planes; the first stage keeps the resolution, each later one
// halves it.
struct Architecture {
  BlockImpl::Kind kind;
  std::vector<int64_t> blocks;
  std::vector<int64_t> planes;
  int64_t stem;
};

std::vector<cfamc_option_decl> common_options() {
  return {
      cfamc::option("in_channels", CFAMC_OPTION_INT, "3", "channels of the input images"),
      cfamc::option("branches", CFAMC_OPTION_INT, "1", "BatchNorm sets selectable per forward"),
      cfamc::option("mean", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel mean subtracted inside forward; [] for none"),
      cfamc::option("std", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel std divided inside forward; [] for none"),
      cfamc::option("channels_last", CFAMC_OPTION_BOOL, "false", "run convolutions in channels-last memory format"),
  };
}

class ResNetBase : public cfamc::Backbone {
 public:
  ResNetBase(const cfamc::Context& ctx, Architecture arch) : Backbone(ctx), arch_(arch) {
    const int64_t in_channels = ctx.integer("in_channels"), branches = ctx.integer("branches");
    if (in_channels < 1 || branches < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "in_channels and branches must be positive");
    branches_ = static_cast<int32_t>(branches);
    in_channels_ = in_channels;
    channels_last_ = ctx.flag("channels_last");
    normalise_ = register_module("normalise", cfamc::PixelNormalisation(in_channels, ctx.reals("mean"), ctx.reals("std")));
    const bool preact = BlockImpl::preactivated(arch.kind);
    stem_ = register_module("conv1", conv(in_channels, arch.stem, 3, 1));
    if (!preact) stem_norm_ = register_module("bn1", BranchedBatchNorm(arch.stem, branches));
    int64_t in = arch.stem;
    for (size_t stage = 0; stage < arch.blocks.size(); ++stage) {
      const int64_t planes = arch.planes[stage];
      // A ModuleList per stage gives torchvision's parameter names: layer1.0.conv1.weight, ...
      auto layer = register_module("layer" + std::to_string(stage + 1), nn::ModuleList());
      for (int64_t i = 0; i < arch.blocks[stage]; ++i) {
        const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
        blocks_.push_back(Block(arch.kind, in, planes, stride, branches));
        layer->push_back(blocks_.back());
        in = planes * BlockImpl::expansion(arch.kind);
      }
    }
    if (preact) final_norm_ = register_module("bn_final", BranchedBatchNorm(in, branches));
    feature_dim_ = in;
    initialise(ctx.generator());
    to(ctx.device());
    if (channels_last_) {
      torch::NoGradGuard no_grad;
      for (auto& p : parameters())
        if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) override {
    if (x.dim() != 4 || x.size(1) != in_channels_ || !x.is_floating_point()) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, std::string(info_name()) + ": expected float images [N, " +
                                                           std::to_string(in_channels_) + ", H, W], got " +
                                                           c10::str(x.sizes()));
    }
    if (branch < 0 || branch >= branches_) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "no BatchNorm branch " + std::to_string(branch));
    }
    at::Tensor h = normalise_->forward(x);
    if (channels_last_) h = h.contiguous(torch::MemoryFormat::ChannelsLast);
    h = stem_->forward(h);
    if (stem_norm_) h = torch::relu(stem_norm_->forward(h, branch));
    for (auto& block : blocks_) h = block->forward(h, branch);
    if (final_norm_) h = torch::relu(final_norm_->forward(h, branch));
    return h.mean({2, 3});
  }

  int64_t feature_dim() const override { return feature_dim_; }
  int32_t num_branches() const override { return branches_; }

 protected:
  virtual const char* info_name() const = 0;

 private:
  // kaiming_normal_(fan_out, relu) for convolutions; BatchNorm weight 1, bias 0 (their defaults).
  void initialise(at::Generator generator) {
    torch::NoGradGuard no_grad;
    for (auto& module : modules(/*include_self=*/false)) {
      if (auto* c = module->as<nn::Conv2d>()) {
        const auto& k = c->options.kernel_size();
        const double fan_out = static_cast<double>(c->options.out_channels() * (*k)[0] * (*k)[1]);
        c->weight.normal_(0.0, std::sqrt(2.0 / fan_out), generator);
      }
    }
  }

  Architecture arch_;
  int64_t in_channels_ = 3, feature_dim_ = 0;
  int32_t branches_ = 1;
  bool channels_last_ = false;
  nn::Conv2d stem_{nullptr};
  BranchedBatchNorm stem_norm_{nullptr}, final_norm_{nullptr};
  std::vector<Block> blocks_;
  cfamc::PixelNormalisation normalise_{nullptr};
};

#define CFAMC_RESNET(CLASS, NAME, SUMMARY, ...)                                       \
  class CLASS : public ResNetBase {                                                   \
   public:                                                                            \
    static constexpr const char* name = NAME;                                         \
    static constexpr const char* summary = SUMMARY;                                   \
    static std::vector<cfamc_option_decl> options() { return common_options(); }       \
    explicit CLASS(const cfamc::Context& ctx) : ResNetBase(ctx, Architecture{__VA_ARGS__}) {} \
                                                                                      \
   protected:                                                                         \
    const char* info_name() const override { return NAME; }                           \
  };

using Kind = BlockImpl::Kind;
const std::vector<int64_t> kResNetPlanes = {64, 128, 256, 512};

CFAMC_RESNET(ResNet18, "resnet18", "ResNet-18, CIFAR stem, basic blocks [2,2,2,2], 512-d", Kind::basic, {2, 2, 2, 2},
             kResNetPlanes, 64)
CFAMC_RESNET(ResNet34, "resnet34", "ResNet-34, CIFAR stem, basic blocks [3,4,6,3], 512-d", Kind::basic, {3, 4, 6, 3},
             kResNetPlanes, 64)
CFAMC_RESNET(ResNet50, "resnet50", "ResNet-50, CIFAR stem, bottlenecks [3,4,6,3], 2048-d", Kind::bottleneck,
             {3, 4, 6, 3}, kResNetPlanes, 64)
CFAMC_RESNET(PreActResNet18, "preact_resnet18", "PreAct ResNet-18 (fast/free AT literature), 512-d", Kind::preact,
             {2, 2, 2, 2}, kResNetPlanes, 64)
CFAMC_RESNET(ResNet50v2, "resnet50v2", "ResNet-50 v2 for 32x32: pre-activation bottlenecks [3,4,6,3], 2048-d",
             Kind::preact_bottleneck, {3, 4, 6, 3}, kResNetPlanes, 64)
CFAMC_RESNET(WideResNet34x10, "wrn34_10", "WideResNet-34-10 (RobustBench): 3 stages of 5 pre-activation blocks, 640-d",
             Kind::preact, {5, 5, 5}, {160, 320, 640}, 16)

}  // namespace

CFAMC_PLUGIN("resnet", "0.1.0", cfamc::component<ResNet18>(), cfamc::component<ResNet34>(),
             cfamc::component<ResNet50>(), cfamc::component<PreActResNet18>(), cfamc::component<ResNet50v2>(),
             cfamc::component<WideResNet34x10>())
