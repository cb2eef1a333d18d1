// A backbone as a plugin built against plugin ABI 1.0 describes itself: abi_minor 0 and a function table that
// ends after `forward`. The host must take the defaults for all that came later (export_tensors in 1.2, the
// stages in 1.3). The memory after the cut is not left to chance: it holds functions that offer stages and
// fail loudly, so a host that read beyond `struct_size` would be caught by the tests.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <cstddef>

namespace {

// tanh of a linear map of the per-channel means: small, smooth, and easy to compute beside it in a test.
class ChannelMeans : public cfamc::Backbone {
 public:
  static constexpr const char* name = "abi10_means";
  static constexpr const char* summary = "tanh(W . per-channel means + b), described as a plugin of ABI 1.0";
  static std::vector<cfamc_option_decl> options() {
    return {cfamc::option("in_channels", CFAMC_OPTION_INT, "3", "channels of the input images"),
            cfamc::option("dim", CFAMC_OPTION_INT, "8", "feature dimension")};
  }
  explicit ChannelMeans(const cfamc::Context& ctx)
      : Backbone(ctx), linear_(register_module("linear", torch::nn::Linear(ctx.integer("in_channels"), ctx.integer("dim")))) {
    cfamc::initialise_linear_layers(*this, ctx.generator());
  }
  at::Tensor forward(const at::Tensor& x, int32_t /*branch*/) override {
    return torch::tanh(linear_->forward(x.mean({2, 3})));
  }
  int64_t feature_dim() const override { return linear_->options.out_features(); }

 private:
  torch::nn::Linear linear_;
};

cfamc_error* read_past_table(const char* what) {
  return cfamc::host().error_create(CFAMC_ERROR_INTERNAL,
                                    (std::string("the host called ") + what + " beyond a 1.0 table's struct_size").c_str());
}

// The C++ layer's table cut where ABI 1.0's ended; beyond the cut, traps.
const cfamc_backbone_vtable* abi10_table() {
  static const cfamc_backbone_vtable table = [] {
    cfamc_backbone_vtable t = *cfamc::detail::backbone_vtable<ChannelMeans>();
    t.struct_size = offsetof(cfamc_backbone_vtable, export_tensors);
    t.export_tensors = [](void*, int32_t, const cfamc_tensor_visitor*) { return read_past_table("export_tensors"); };
    t.num_stages = [](void*) -> int32_t { return 4; };
    t.num_stage_copies = [](void*) -> int32_t { return 1; };
    t.stage_channels = [](void*, int32_t) -> int64_t { return 1; };
    t.forward_stages = [](void*, const cfamc_tensor*, int32_t, int32_t, int32_t, int32_t, cfamc_tensor**) {
      return read_past_table("forward_stages");
    };
    return t;
  }();
  return &table;
}

}  // namespace

extern "C" CFAMC_EXPORT const cfamc_plugin_desc* cfamc_plugin_entry_v1(const cfamc_host_api* api) {
  cfamc::detail::g_host = api;
  static const std::vector<cfamc_option_decl> options = ChannelMeans::options();
  static const cfamc_component_desc components[] = {{sizeof(cfamc_component_desc), CFAMC_KIND_BACKBONE, ChannelMeans::name,
                                                     ChannelMeans::summary, options.data(), options.size(), abi10_table()}};
  static const cfamc_plugin_desc desc = {sizeof(cfamc_plugin_desc), CFAMC_ABI_MAJOR, 0, "abi10_means", "0.0.1",
                                         cfamc::detail::fingerprint(), components, 1};
  return &desc;
}
