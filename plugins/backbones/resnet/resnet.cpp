// ResNets for small images, read like torchvision's resnet.py but with the CIFAR stem (3x3 stride-1 conv, no
// max-pool): resnet18 and resnet34 (BasicBlock), resnet50 (Bottleneck); and the pre-activation family of He et
// al. 2016 (PreActBlock, PreActBottleneck): preact_resnet18 (fast/free adversarial training), resnet50v2
// (Adv-SS pre-training) and wrn34_10 (WideResNet-34-10, the RobustBench standard). Every BatchNorm exists
// once per branch, selected per forward; normalisation happens inside; the output is the globally pooled
// feature (no classifier). Tensor names are torchvision's (layer1.0.conv1.weight, ...) except the shortcut,
// `shortcut` and `shortcut_bn` for its `downsample`, and the BatchNorm set after each BatchNorm's name:
// checkpoints carry these names, and `export_tensors` gives torchvision's. Every network runs by stages (ABI
// 1.3): stage k is the output of layer k, and the last stage exists in `last_stage_copies` copies, copy c > 0
// named layer<S>_copy<c> (and bn_final_copy<c>, which belongs to it); copy 0 is the network `forward` runs.
#include <cfamc/distributed.hpp>
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cmath>
#include <optional>

namespace {

namespace nn = torch::nn;

// `name` as torchvision calls it when BatchNorm set `branch` is the only one; nothing for the tensors of
// other sets and for the input normalisation. A segment after a BatchNorm's own name is its set.
std::optional<std::string> torchvision_name(const std::string& name, int32_t branch) {
  std::vector<std::string> parts;
  for (size_t start = 0, dot = 0; dot != std::string::npos; start = dot + 1) {
    dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
  }
  if (parts.front() == "normalise" || parts.front().find("_copy") != std::string::npos) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const bool norm = part.rfind("bn", 0) == 0 || part == "shortcut_bn";
    if (norm && i + 1 < parts.size() && parts[i + 1] != std::to_string(branch)) return std::nullopt;
    out += (out.empty() ? "" : ".") + (part == "shortcut" ? "downsample.0" : part == "shortcut_bn" ? "downsample.1" : part);
    if (norm) ++i;  // the set's index
  }
  return out;
}

// One BatchNorm per branch (AdvCL uses 3 sets, ACL 2).
class BranchedBatchNormImpl : public nn::Module {
 public:
  BranchedBatchNormImpl(int64_t channels, int64_t branches) {
    for (int64_t b = 0; b < branches; ++b) norms_.push_back(register_module(std::to_string(b), cfamc::BatchNorm(channels)));
  }
  at::Tensor forward(const at::Tensor& x, int32_t branch) { return norms_[branch]->forward(x); }

 private:
  std::vector<cfamc::BatchNorm> norms_;  // cfamc's: global statistics under SyncBatchNorm
};
TORCH_MODULE(BranchedBatchNorm);

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}

nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false));
}

// A 3x3 convolution of `conv3x3`. On a 1x1 map a strided one gives the same 1x1 output as the unstrided one,
// and LibTorch 2.11's CPU bfloat16 kernel (oneDNN) returns garbage weight gradients (values up to 1e38) for
// the strided form on a 1x1 input, which selfie's 2x2 patches reach at the third stage: so it runs unstrided.
at::Tensor convolve3x3(nn::Conv2d& conv, const at::Tensor& x) {
  if (x.size(2) == 1 && x.size(3) == 1) return torch::conv2d(x, conv->weight, {}, /*stride=*/1, /*padding=*/1);
  return conv->forward(x);
}

// The identity shortcut only fits where the block keeps the resolution and the channels.
bool needs_projection(int64_t in, int64_t out, int64_t stride) { return stride != 1 || in != out; }

// Within each block, modules are registered convolution first, then its BatchNorm: the pre-activation blocks
// too, although their BatchNorm runs first, so that the seeded initialisation and the tensor order stay
// those of earlier versions.

class BasicBlock : public nn::Module {
 public:
  static constexpr int64_t expansion = 1;
  static constexpr bool preactivated = false;

  BasicBlock(int64_t in, int64_t planes, int64_t stride, int64_t branches)
      : conv1_(register_module("conv1", conv3x3(in, planes, stride))),
        bn1_(register_module("bn1", BranchedBatchNorm(planes, branches))),
        conv2_(register_module("conv2", conv3x3(planes, planes))),
        bn2_(register_module("bn2", BranchedBatchNorm(planes, branches))) {
    if (needs_projection(in, planes, stride)) {
      shortcut_ = register_module("shortcut", conv1x1(in, planes, stride));
      shortcut_bn_ = register_module("shortcut_bn", BranchedBatchNorm(planes, branches));
    }
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    at::Tensor out = torch::relu(bn1_->forward(convolve3x3(conv1_, x), branch));
    out = bn2_->forward(conv2_->forward(out), branch);
    const at::Tensor identity = shortcut_ ? shortcut_bn_->forward(shortcut_->forward(x), branch) : x;
    return torch::relu(out + identity);
  }

 private:
  nn::Conv2d conv1_;
  BranchedBatchNorm bn1_;
  nn::Conv2d conv2_;
  BranchedBatchNorm bn2_;
  nn::Conv2d shortcut_{nullptr};
  BranchedBatchNorm shortcut_bn_{nullptr};
};

// torchvision's (v1.5) places the stride on the 3x3 convolution, not on the first 1x1.
class Bottleneck : public nn::Module {
 public:
  static constexpr int64_t expansion = 4;
  static constexpr bool preactivated = false;

  Bottleneck(int64_t in, int64_t planes, int64_t stride, int64_t branches)
      : conv1_(register_module("conv1", conv1x1(in, planes))),
        bn1_(register_module("bn1", BranchedBatchNorm(planes, branches))),
        conv2_(register_module("conv2", conv3x3(planes, planes, stride))),
        bn2_(register_module("bn2", BranchedBatchNorm(planes, branches))),
        conv3_(register_module("conv3", conv1x1(planes, planes * expansion))),
        bn3_(register_module("bn3", BranchedBatchNorm(planes * expansion, branches))) {
    if (needs_projection(in, planes * expansion, stride)) {
      shortcut_ = register_module("shortcut", conv1x1(in, planes * expansion, stride));
      shortcut_bn_ = register_module("shortcut_bn", BranchedBatchNorm(planes * expansion, branches));
    }
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    at::Tensor out = torch::relu(bn1_->forward(conv1_->forward(x), branch));
    out = torch::relu(bn2_->forward(convolve3x3(conv2_, out), branch));
    out = bn3_->forward(conv3_->forward(out), branch);
    const at::Tensor identity = shortcut_ ? shortcut_bn_->forward(shortcut_->forward(x), branch) : x;
    return torch::relu(out + identity);
  }

 private:
  nn::Conv2d conv1_;
  BranchedBatchNorm bn1_;
  nn::Conv2d conv2_;
  BranchedBatchNorm bn2_;
  nn::Conv2d conv3_;
  BranchedBatchNorm bn3_;
  nn::Conv2d shortcut_{nullptr};
  BranchedBatchNorm shortcut_bn_{nullptr};
};

// He et al. 2016: BatchNorm and ReLU before each convolution and nothing after the sum, so the identity path
// stays clean; a projecting shortcut takes the pre-activated input and has no BatchNorm of its own.
class PreActBlock : public nn::Module {
 public:
  static constexpr int64_t expansion = 1;
  static constexpr bool preactivated = true;

  PreActBlock(int64_t in, int64_t planes, int64_t stride, int64_t branches)
      : conv1_(register_module("conv1", conv3x3(in, planes, stride))),
        bn1_(register_module("bn1", BranchedBatchNorm(in, branches))),
        conv2_(register_module("conv2", conv3x3(planes, planes))),
        bn2_(register_module("bn2", BranchedBatchNorm(planes, branches))) {
    if (needs_projection(in, planes, stride)) shortcut_ = register_module("shortcut", conv1x1(in, planes, stride));
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    const at::Tensor pre = torch::relu(bn1_->forward(x, branch));
    const at::Tensor identity = shortcut_ ? shortcut_->forward(pre) : x;
    at::Tensor out = convolve3x3(conv1_, pre);
    out = conv2_->forward(torch::relu(bn2_->forward(out, branch)));
    return out + identity;
  }

 private:
  nn::Conv2d conv1_;
  BranchedBatchNorm bn1_;
  nn::Conv2d conv2_;
  BranchedBatchNorm bn2_;
  nn::Conv2d shortcut_{nullptr};
};

class PreActBottleneck : public nn::Module {
 public:
  static constexpr int64_t expansion = 4;
  static constexpr bool preactivated = true;

  PreActBottleneck(int64_t in, int64_t planes, int64_t stride, int64_t branches)
      : conv1_(register_module("conv1", conv1x1(in, planes))),
        bn1_(register_module("bn1", BranchedBatchNorm(in, branches))),
        conv2_(register_module("conv2", conv3x3(planes, planes, stride))),
        bn2_(register_module("bn2", BranchedBatchNorm(planes, branches))),
        conv3_(register_module("conv3", conv1x1(planes, planes * expansion))),
        bn3_(register_module("bn3", BranchedBatchNorm(planes, branches))) {
    if (needs_projection(in, planes * expansion, stride)) {
      shortcut_ = register_module("shortcut", conv1x1(in, planes * expansion, stride));
    }
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) {
    const at::Tensor pre = torch::relu(bn1_->forward(x, branch));
    const at::Tensor identity = shortcut_ ? shortcut_->forward(pre) : x;
    at::Tensor out = conv1_->forward(pre);
    out = convolve3x3(conv2_, torch::relu(bn2_->forward(out, branch)));
    out = conv3_->forward(torch::relu(bn3_->forward(out, branch)));
    return out + identity;
  }

 private:
  nn::Conv2d conv1_;
  BranchedBatchNorm bn1_;
  nn::Conv2d conv2_;
  BranchedBatchNorm bn2_;
  nn::Conv2d conv3_;
  BranchedBatchNorm bn3_;
  nn::Conv2d shortcut_{nullptr};
};

// torchvision's ResNet on `Block` with the CIFAR stem. Stage i has depths[i] blocks of widths[i] planes; the
// first stage keeps the resolution, each later one halves it. A post-activation network normalises the stem
// (bn1); a pre-activation one leaves the stem bare and instead normalises the last block's sum (bn_final),
// which no block of its own does. The stem belongs to stage 1; bn_final to the last stage's copy.
template <class Block>
class ResNet : public cfamc::Backbone {
 public:
  static std::vector<cfamc_option_decl> options() {
    return {
        cfamc::option("in_channels", CFAMC_OPTION_INT, "3", "channels of the input images"),
        cfamc::option("branches", CFAMC_OPTION_INT, "1", "BatchNorm sets selectable per forward"),
        cfamc::option("mean", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel mean subtracted inside forward; [] for none"),
        cfamc::option("std", CFAMC_OPTION_FLOAT_LIST, "[]", "per-channel std divided inside forward; [] for none"),
        cfamc::option("channels_last", CFAMC_OPTION_BOOL, "true",
                      "run convolutions in channels-last memory format (measured faster on the CPU in fp32 and bf16)"),
        cfamc::option("last_stage_copies", CFAMC_OPTION_INT, "1",
                      "copies of the last stage with parameters of their own, one per task of an objective that "
                      "runs stages (pretext_ensemble); copy 0 is the network forward, evaluators and export use"),
    };
  }

  ResNet(const cfamc::Context& ctx, const char* name, const std::vector<int64_t>& depths,
         const std::vector<int64_t>& widths = {64, 128, 256, 512}, int64_t stem_width = 64)
      : Backbone(ctx),
        name_(name),
        in_channels_(ctx.integer("in_channels")),
        branches_(ctx.integer("branches")),
        channels_last_(ctx.flag("channels_last")),
        copies_(ctx.integer("last_stage_copies")) {
    if (in_channels_ < 1 || branches_ < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "in_channels and branches must be positive");
    if (copies_ < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, std::string(name) + ": last_stage_copies must be at least 1");
    normalise_ = register_module("normalise", cfamc::PixelNormalisation(in_channels_, ctx.reals("mean"), ctx.reals("std")));
    conv1_ = register_module("conv1", conv3x3(in_channels_, stem_width));
    if (!Block::preactivated) bn1_ = register_module("bn1", BranchedBatchNorm(stem_width, branches_));
    stage_channels_ = {in_channels_};
    const std::string last = "layer" + std::to_string(depths.size());
    for (size_t stage = 0; stage < depths.size(); ++stage) {
      stages_.emplace_back();
      const std::string layer = "layer" + std::to_string(stage + 1);
      const int64_t in = stage == 0 ? stem_width : stage_channels_.back();
      stage_channels_.push_back(make_layer(layer, stage, in, widths[stage], depths[stage], stages_.back()));
    }
    // Copies come after every tensor of copy 0, so that copy 0's seeded initialisation and names are those of a
    // network without copies.
    make_final_norm("bn_final");
    for (int64_t c = 1; c < copies_; ++c) {
      const std::string suffix = "_copy" + std::to_string(c);
      copies_of_last_.emplace_back();
      make_layer(last + suffix, depths.size() - 1, stage_channels_[depths.size() - 1], widths.back(), depths.back(),
                 copies_of_last_.back());
      make_final_norm("bn_final" + suffix);
    }
    feature_dim_ = stage_channels_.back();
    initialise(ctx.generator());
    to(ctx.device());
    if (channels_last_) to_channels_last();
  }

  at::Tensor forward(const at::Tensor& x, int32_t branch) override {
    return forward_stages(x, branch, 0, CFAMC_STAGE_FEATURE, 0);
  }

  // Stage 0 is the image; the stem runs with stage 1; the feature adds the last copy's bn_final and pooling.
  at::Tensor forward_stages(const at::Tensor& x, int32_t branch, int32_t from, int32_t to, int32_t copy) override {
    check_stages(x, branch, from, to, copy);
    const int32_t last = to == CFAMC_STAGE_FEATURE ? num_stages() : to;
    at::Tensor h = from == 0 ? stem(x, branch) : x;
    for (int32_t stage = from + 1; stage <= last; ++stage) {
      for (auto& block : blocks_of(stage, copy)) h = block->forward(h, branch);
    }
    if (to != CFAMC_STAGE_FEATURE) return h;
    if (Block::preactivated) h = torch::relu(final_norms_[copy]->forward(h, branch));
    return h.mean({2, 3});
  }

  int64_t feature_dim() const override { return feature_dim_; }
  int32_t num_branches() const override { return static_cast<int32_t>(branches_); }
  int32_t num_stages() const override { return static_cast<int32_t>(stages_.size()); }
  int32_t num_stage_copies() const override { return static_cast<int32_t>(copies_); }
  int64_t stage_channels(int32_t stage) const override {
    if (stage == CFAMC_STAGE_FEATURE) return feature_dim_;
    return stage >= 0 && stage <= num_stages() ? stage_channels_[stage] : 0;
  }

  // torchvision's names: BatchNorm set `branch` becomes the only one (bn1.<b>.weight -> bn1.weight) and the
  // projecting shortcut is `downsample` (shortcut -> downsample.0, shortcut_bn -> downsample.1). The input
  // normalisation is no tensor of torchvision's model; the host records it as metadata.
  cfamc::TensorMap export_tensors(int32_t branch) override {
    if (branch < 0 || branch >= branches_) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, std::string(name_) + " has BatchNorm branches 0.." +
                                                           std::to_string(branches_ - 1) + ", not " + std::to_string(branch));
    }
    cfamc::TensorMap out;
    const auto add = [&](const std::string& name, const at::Tensor& value) {
      if (auto exported = torchvision_name(name, branch)) out.insert(*exported, value);
    };
    for (const auto& item : named_parameters(/*recurse=*/true)) add(item.key(), item.value());
    for (const auto& item : named_buffers(/*recurse=*/true)) add(item.key(), item.value());
    return out;
  }

 private:
  using Blocks = std::vector<std::shared_ptr<Block>>;

  // torchvision's _make_layer; a ModuleList per stage gives its names (layer1.0.conv1.weight, ...). Returns
  // the stage's output channels.
  int64_t make_layer(const std::string& name, size_t stage, int64_t in, int64_t planes, int64_t depth, Blocks& blocks) {
    auto layer = register_module(name, nn::ModuleList());
    for (int64_t i = 0; i < depth; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      blocks.push_back(std::make_shared<Block>(in, planes, stride, branches_));
      layer->push_back(blocks.back());
      in = planes * Block::expansion;
    }
    return in;
  }

  void make_final_norm(const std::string& name) {
    if (Block::preactivated) final_norms_.push_back(register_module(name, BranchedBatchNorm(stage_channels_.back(), branches_)));
  }

  // The normalised input through the first convolution (and, post-activation, its BatchNorm and ReLU).
  at::Tensor stem(const at::Tensor& x, int32_t branch) {
    at::Tensor h = normalise_->forward(x);
    if (channels_last_) h = h.contiguous(torch::MemoryFormat::ChannelsLast);
    h = conv1_->forward(h);
    return bn1_ ? torch::relu(bn1_->forward(h, branch)) : h;
  }

  Blocks& blocks_of(int32_t stage, int32_t copy) {
    return stage < num_stages() || copy == 0 ? stages_[stage - 1] : copies_of_last_[copy - 1];
  }

  // torchvision's: kaiming_normal_(fan_out, relu) for convolutions, drawn from the component's generator;
  // BatchNorm keeps its default weight 1, bias 0.
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

  void to_channels_last() {
    torch::NoGradGuard no_grad;
    for (auto& p : parameters())
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }

  void check_stages(const at::Tensor& x, int32_t branch, int32_t from, int32_t to, int32_t copy) const {
    const auto refuse = [&](const std::string& problem) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, std::string(name_) + ": " + problem);
    };
    if (from < 0 || from > num_stages() || (to != CFAMC_STAGE_FEATURE && (to <= from || to > num_stages()))) {
      refuse("no stages from " + std::to_string(from) + " to " + std::to_string(to) + " (stages 0.." +
             std::to_string(num_stages()) + ", or the feature " + std::to_string(CFAMC_STAGE_FEATURE) + ")");
    }
    if (copy < 0 || copy >= copies_) refuse("no copy " + std::to_string(copy) + " of the last stage");
    if (branch < 0 || branch >= branches_) refuse("no BatchNorm branch " + std::to_string(branch));
    if (x.dim() != 4 || x.size(1) != stage_channels_[from] || !x.is_floating_point()) {
      refuse("expected float " + std::string(from == 0 ? "images" : "stage " + std::to_string(from) + " outputs") +
             " [N, " + std::to_string(stage_channels_[from]) + ", H, W], got " + c10::str(x.sizes()));
    }
  }

  const char* name_;
  int64_t in_channels_, branches_;
  bool channels_last_;
  int64_t copies_;
  int64_t feature_dim_ = 0;
  std::vector<int64_t> stage_channels_;  // stage 0 (the input) .. S
  cfamc::PixelNormalisation normalise_{nullptr};
  nn::Conv2d conv1_{nullptr};
  BranchedBatchNorm bn1_{nullptr};
  std::vector<Blocks> stages_;                   // layer1 .. layerS, the last one copy 0
  std::vector<Blocks> copies_of_last_;           // copies 1.. of layerS
  std::vector<BranchedBatchNorm> final_norms_;  // pre-activation: bn_final of each copy
};

// The shipped networks, as torchvision's resnet18() etc.: a block type and the depth of each stage.

class ResNet18 : public ResNet<BasicBlock> {
 public:
  static constexpr const char* name = "resnet18";
  static constexpr const char* summary = "ResNet-18, CIFAR stem, basic blocks [2,2,2,2], 512-d";
  explicit ResNet18(const cfamc::Context& ctx) : ResNet(ctx, name, {2, 2, 2, 2}) {}
};

class ResNet34 : public ResNet<BasicBlock> {
 public:
  static constexpr const char* name = "resnet34";
  static constexpr const char* summary = "ResNet-34, CIFAR stem, basic blocks [3,4,6,3], 512-d";
  explicit ResNet34(const cfamc::Context& ctx) : ResNet(ctx, name, {3, 4, 6, 3}) {}
};

class ResNet50 : public ResNet<Bottleneck> {
 public:
  static constexpr const char* name = "resnet50";
  static constexpr const char* summary = "ResNet-50, CIFAR stem, bottlenecks [3,4,6,3], 2048-d";
  explicit ResNet50(const cfamc::Context& ctx) : ResNet(ctx, name, {3, 4, 6, 3}) {}
};

class PreActResNet18 : public ResNet<PreActBlock> {
 public:
  static constexpr const char* name = "preact_resnet18";
  static constexpr const char* summary = "PreAct ResNet-18 (fast/free AT literature), 512-d";
  explicit PreActResNet18(const cfamc::Context& ctx) : ResNet(ctx, name, {2, 2, 2, 2}) {}
};

class ResNet50v2 : public ResNet<PreActBottleneck> {
 public:
  static constexpr const char* name = "resnet50v2";
  static constexpr const char* summary = "ResNet-50 v2 for 32x32: pre-activation bottlenecks [3,4,6,3], 2048-d";
  explicit ResNet50v2(const cfamc::Context& ctx) : ResNet(ctx, name, {3, 4, 6, 3}) {}
};

// Depth 34 = 6n + 4 gives n = 5 blocks per stage; widen factor 10 on 16, 32, 64 planes.
class WideResNet34x10 : public ResNet<PreActBlock> {
 public:
  static constexpr const char* name = "wrn34_10";
  static constexpr const char* summary = "WideResNet-34-10 (RobustBench): 3 stages of 5 pre-activation blocks, 640-d";
  explicit WideResNet34x10(const cfamc::Context& ctx) : ResNet(ctx, name, {5, 5, 5}, {160, 320, 640}, 16) {}
};

}  // namespace

CFAMC_PLUGIN("resnet", "0.1.0", cfamc::component<ResNet18>(), cfamc::component<ResNet34>(),
             cfamc::component<ResNet50>(), cfamc::component<PreActResNet18>(), cfamc::component<ResNet50v2>(),
             cfamc::component<WideResNet34x10>())
