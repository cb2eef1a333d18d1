// An objective whose loss becomes NaN after `finite_steps` training calls, to test that the host stops
// with exit code 5 and keeps the last good checkpoint.
#include <cfamc/plugin.hpp>

#include <torch/torch.h>

#include <limits>

namespace {

class NanAfter : public cfamc::Objective {
 public:
  static constexpr const char* name = "nan_after";
  static constexpr const char* summary = "mean feature as the loss, NaN after finite_steps calls";
  static std::vector<cfamc_option_decl> options() {
    return {cfamc::option("finite_steps", CFAMC_OPTION_INT, "3", "training losses before the first NaN")};
  }
  explicit NanAfter(const cfamc::Context& ctx) : Objective(ctx), finite_steps_(ctx.integer("finite_steps")) {}

  std::vector<std::string> view_groups() const override { return {"views"}; }
  std::vector<std::string> attacked_inputs() const override { return {"views"}; }
  at::Tensor loss(const cfamc::Encoder& encoder, const cfamc::TensorMap& clean, const cfamc::TensorMap&, cfamc_phase phase,
                  cfamc::TensorMap&) override {
    at::Tensor value = encoder(clean["views"]).mean();
    if (phase == CFAMC_PHASE_TRAIN && ++calls_ > finite_steps_) value = value * std::numeric_limits<float>::quiet_NaN();
    return value;
  }

 private:
  int64_t finite_steps_;
  int64_t calls_ = 0;
};

}  // namespace

CFAMC_PLUGIN("nan_after", "0.0.1", cfamc::component<NanAfter>())
