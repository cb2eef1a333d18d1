// C++ plugins that throw, to test that no exception crosses the ABI: a backbone whose constructor throws,
// one whose forward throws, and an evaluator that throws something that is not a std::exception.
#include <cfamc/plugin.hpp>

#include <stdexcept>

namespace {

class ThrowsInCreate : public cfamc::Backbone {
 public:
  static constexpr const char* name = "throws_in_create";
  static constexpr const char* summary = "its constructor throws";
  static std::vector<cfamc_option_decl> options() { return {}; }
  explicit ThrowsInCreate(const cfamc::Context& ctx) : Backbone(ctx) {
    throw std::runtime_error("boom in the constructor");
  }
  at::Tensor forward(const at::Tensor& x, int32_t) override { return x; }
  int64_t feature_dim() const override { return 1; }
};

class ThrowsInForward : public cfamc::Backbone {
 public:
  static constexpr const char* name = "throws_in_forward";
  static constexpr const char* summary = "its forward throws";
  static std::vector<cfamc_option_decl> options() { return {}; }
  using Backbone::Backbone;
  at::Tensor forward(const at::Tensor&, int32_t) override { throw std::logic_error("boom in forward"); }
  int64_t feature_dim() const override { return 1; }
};

class ThrowsNonStandard : public cfamc::Evaluator {
 public:
  static constexpr const char* name = "throws_int";
  static constexpr const char* summary = "its evaluate throws an int";
  static std::vector<cfamc_option_decl> options() { return {}; }
  using Evaluator::Evaluator;
  void evaluate(const cfamc::EvalServices&) override { throw 42; }
};

}  // namespace

CFAMC_PLUGIN("throwing", "0.0.1", cfamc::component<ThrowsInCreate>(), cfamc::component<ThrowsInForward>(),
             cfamc::component<ThrowsNonStandard>())
