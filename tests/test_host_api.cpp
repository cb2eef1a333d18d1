// The host API a plugin without LibTorch relies on: the DLPack export's guarantee (compact row-major strides,
// byte_offset 0, shared memory when contiguous), the import, and the ABI 1.1 allocation functions, called
// directly and through the plain-C test plugin c_shift.
#include "torch_catch.hpp"

#include <ATen/DLConvertor.h>

#include "config/options.hpp"
#include "plugins/components.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"
#include "support.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

const cfamc_host_api& api() { return *host_api(); }

// Releases an error from the host and gives its code and message; 0 for success.
std::pair<int, std::string> outcome(cfamc_error* error) {
  if (error == nullptr) return {0, ""};
  std::pair<int, std::string> result{api().error_code(error), api().error_message(error)};
  api().error_release(error);
  return result;
}

// A handle's tensor, taking the handle.
at::Tensor take(cfamc_tensor* handle) { return adopt(handle); }

at::Tensor zeros(const std::vector<int64_t>& shape, cfamc_dtype dtype, const char* device,
                 const cfamc_context* ctx = nullptr) {
  cfamc_tensor* out = nullptr;
  const auto [code, message] = outcome(api().tensor_zeros(ctx, shape.data(), shape.size(), dtype, device, &out));
  INFO(message);
  REQUIRE(code == 0);
  return take(out);
}

at::Tensor copy(const at::Tensor& source, const char* device, cfamc_dtype dtype) {
  cfamc_tensor* in = make_handle(source);
  cfamc_tensor* out = nullptr;
  const auto [code, message] = outcome(api().tensor_copy(in, device, dtype, &out));
  api().tensor_release(in);
  INFO(message);
  REQUIRE(code == 0);
  return take(out);
}

// Exports `tensor`, hands the DLTensor to `check`, then calls the deleter.
template <class Check>
void exported(const at::Tensor& tensor, Check check) {
  cfamc_tensor* handle = make_handle(tensor);
  DLManagedTensor* managed = nullptr;
  REQUIRE(outcome(api().tensor_to_dlpack(handle, &managed)).first == 0);
  api().tensor_release(handle);  // the export keeps the tensor alive on its own
  check(managed->dl_tensor);
  managed->deleter(managed);
}

void check_compact(const DLTensor& t) {
  REQUIRE(t.strides != nullptr);
  CHECK(t.byte_offset == 0);
  int64_t expected = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    CHECK(t.strides[d] == expected);
    expected *= std::max<int64_t>(t.shape[d], 1);
  }
}

std::unique_ptr<Attack> c_shift(double epsilon, const std::string& device = "cpu") {
  static const Registry registry = Registry::discover({cfamc::test::test_plugin("c_shift")}, host_api());
  const ComponentInfo& info = registry.find(CFAMC_KIND_ATTACK, "c_shift");
  ComponentSetup setup{"attack", resolve_options(toml::parse("epsilon = " + std::to_string(epsilon)), info.options,
                                                 "attack", "test"),
                       1, device, 0};
  return instantiate<Attack>(registry, info, std::move(setup));
}

at::Tensor shifted_by_plugin(Attack& attack, const at::Tensor& x) {
  TensorMap inputs;
  inputs.insert("x", x);
  const cfamc_oracle no_oracle{sizeof(cfamc_oracle), nullptr, nullptr, nullptr, nullptr};
  return attack.perturb(no_oracle, inputs)["x"];
}

}  // namespace

TEST_CASE("the host API is ABI 1.4 and its table reaches the appended functions", "[abi][dlpack]") {
  CHECK(api().abi_major == 1);
  CHECK(api().abi_minor == 4);
  CHECK(CFAMC_HOST_HAS(&api(), all_reduce_sum));
  CHECK(api().world_size() == 1);  // no data-parallel job in a test process
  CHECK(api().world_rank() == 0);
  CHECK(CFAMC_HOST_HAS(&api(), tensor_zeros));
  CHECK(CFAMC_HOST_HAS(&api(), tensor_copy));
  CHECK(CFAMC_HOST_HAS(&api(), stage_channels));
  // A 1.0 host's table ends after tensor_from_dlpack: the check says no without reading beyond it.
  cfamc_host_api old = api();
  old.struct_size = offsetof(cfamc_host_api, tensor_zeros);
  CHECK_FALSE(CFAMC_HOST_HAS(&old, tensor_zeros));
  CHECK_FALSE(CFAMC_HOST_HAS(&old, tensor_copy));
}

TEST_CASE("a DLPack export is compact row-major with byte_offset 0, whatever the tensor's layout", "[dlpack]") {
  SECTION("a contiguous tensor is shared, not copied") {
    const at::Tensor x = torch::rand({2, 3, 4});
    exported(x, [&](const DLTensor& t) {
      check_compact(t);
      CHECK(t.data == x.data_ptr());
      CHECK(t.ndim == 3);
      CHECK(t.dtype.code == kDLFloat);
      CHECK(t.dtype.bits == 32);
      CHECK(t.device.device_type == kDLCPU);
    });
  }
  SECTION("a transposed view comes out compact, with its values in row-major order") {
    const at::Tensor x = torch::arange(24, torch::kFloat).view({2, 3, 4}).transpose(0, 2);
    exported(x, [&](const DLTensor& t) {
      check_compact(t);
      CHECK(std::vector<int64_t>(t.shape, t.shape + t.ndim) == std::vector<int64_t>{4, 3, 2});
      const at::Tensor seen = torch::from_blob(t.data, {4, 3, 2}, torch::kFloat);
      CHECK(torch::equal(seen, x));
    });
  }
  SECTION("an offset slice and size-1 dimensions") {
    const at::Tensor base = torch::rand({5, 1, 3});
    const at::Tensor x = base.slice(0, 2, 4);  // storage offset 6
    exported(x, [&](const DLTensor& t) {
      check_compact(t);
      CHECK(t.data == x.data_ptr());
      CHECK(t.strides[1] == 3);  // a size-1 dimension still has its compact stride
    });
  }
  SECTION("an expanded (stride 0) tensor") {
    const at::Tensor x = torch::rand({1, 3}).expand({4, 3});
    exported(x, [&](const DLTensor& t) {
      check_compact(t);
      CHECK(torch::equal(torch::from_blob(t.data, {4, 3}, torch::kFloat), x));
    });
  }
  SECTION("bool tensors carry DLPack's kDLBool code (6), which DLPack 0.6's header does not name") {
    exported(torch::ones({2}, torch::kBool), [](const DLTensor& t) { CHECK(int(t.dtype.code) == 6); });
  }
}

TEST_CASE("a DLPack import takes plugin memory with NULL strides as compact", "[dlpack]") {
  struct Owned {
    DLManagedTensor managed{};
    std::vector<float> data{1, 2, 3, 4, 5, 6};
    std::vector<int64_t> shape{2, 3};
    bool* deleted;
  };
  bool deleted = false;
  auto* owned = new Owned;
  owned->deleted = &deleted;
  owned->managed.dl_tensor = DLTensor{owned->data.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1},
                                      owned->shape.data(), nullptr, 0};
  owned->managed.manager_ctx = owned;
  owned->managed.deleter = [](DLManagedTensor* m) {
    auto* self = static_cast<Owned*>(m->manager_ctx);
    *self->deleted = true;
    delete self;
  };
  cfamc_tensor* handle = nullptr;
  REQUIRE(outcome(api().tensor_from_dlpack(&owned->managed, &handle)).first == 0);
  at::Tensor t = take(handle);
  CHECK(torch::equal(t, torch::arange(1, 7, torch::kFloat).view({2, 3})));
  CHECK_FALSE(deleted);
  t.reset();
  CHECK(deleted);  // the host calls the plugin's deleter once the last reference goes
}

TEST_CASE("tensor_zeros: zero-filled, contiguous, outside autograd, on the asked or the component's device",
          "[dlpack][abi]") {
  const at::Tensor a = zeros({2, 3, 4}, CFAMC_DTYPE_FLOAT32, "cpu");
  CHECK(a.sizes() == at::IntArrayRef({2, 3, 4}));
  CHECK(a.scalar_type() == at::kFloat);
  CHECK(a.is_contiguous());
  CHECK_FALSE(a.requires_grad());
  CHECK(a.count_nonzero().item<int64_t>() == 0);

  CHECK(zeros({5}, CFAMC_DTYPE_INT64, "cpu").scalar_type() == at::kLong);
  CHECK(zeros({2, 2}, CFAMC_DTYPE_UINT8, "cpu").scalar_type() == at::kByte);
  CHECK(zeros({}, CFAMC_DTYPE_FLOAT64, "cpu").dim() == 0);
  CHECK(zeros({0, 3}, CFAMC_DTYPE_BOOL, "cpu").numel() == 0);

  cfamc_context ctx;
  ctx.device = "cpu";
  CHECK(zeros({3}, CFAMC_DTYPE_FLOAT16, nullptr, &ctx).device().is_cpu());
}

TEST_CASE("tensor_zeros and tensor_copy refuse bad arguments as INVALID_ARGUMENT", "[dlpack][abi]") {
  const int64_t shape[] = {2, -1};
  cfamc_tensor* out = nullptr;
  auto [code, message] = outcome(api().tensor_zeros(nullptr, shape, 2, CFAMC_DTYPE_FLOAT32, "cpu", &out));
  CHECK(code == CFAMC_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(message, Contains("negative size -1"));
  std::tie(code, message) = outcome(api().tensor_zeros(nullptr, shape, 1, CFAMC_DTYPE_SAME, "cpu", &out));
  CHECK(code == CFAMC_ERROR_INVALID_ARGUMENT);
  std::tie(code, message) = outcome(api().tensor_zeros(nullptr, shape, 1, CFAMC_DTYPE_FLOAT32, "gpu9", &out));
  CHECK(code == CFAMC_ERROR_INVALID_ARGUMENT);
  CHECK_THAT(message, Contains("'gpu9' is not a device"));
  std::tie(code, message) = outcome(api().tensor_zeros(nullptr, shape, 1, CFAMC_DTYPE_FLOAT32, nullptr, &out));
  CHECK(code == CFAMC_ERROR_INVALID_ARGUMENT);
  cfamc_tensor* x = make_handle(torch::zeros({2}));
  std::tie(code, message) = outcome(api().tensor_copy(x, "cpu", static_cast<cfamc_dtype>(42), &out));
  CHECK(code == CFAMC_ERROR_INVALID_ARGUMENT);
  api().tensor_release(x);
  CHECK(out == nullptr);
}

TEST_CASE("tensor_copy: a deep, contiguous, detached copy, optionally of another type", "[dlpack][abi]") {
  const at::Tensor source = torch::rand({3, 4}).t().requires_grad_(true);
  const at::Tensor same = copy(source, nullptr, CFAMC_DTYPE_SAME);
  CHECK(torch::equal(same, source.detach()));
  CHECK(same.is_contiguous());
  CHECK_FALSE(same.requires_grad());
  CHECK(same.data_ptr() != source.data_ptr());
  {
    torch::NoGradGuard no_grad;
    source.add_(1);  // the copy is its own memory
  }
  CHECK_FALSE(torch::equal(same, source.detach()));

  const at::Tensor doubled = copy(source, "cpu", CFAMC_DTYPE_FLOAT64);
  CHECK(doubled.scalar_type() == at::kDouble);
  CHECK(torch::allclose(doubled.to(at::kFloat), source.detach()));
}

TEST_CASE("c_shift allocates through the host: float32 inputs, other types, non-contiguous views",
          "[attack][dlpack]") {
  auto shift = c_shift(0.25);
  const at::Tensor x = torch::rand({3, 2, 4, 5}).transpose(2, 3);
  const at::Tensor out = shifted_by_plugin(*shift, x);
  CHECK(out.scalar_type() == at::kFloat);
  CHECK(torch::allclose(out, (x + 0.25).clamp(0, 1)));

  const at::Tensor x64 = torch::rand({4, 3}, torch::kDouble);
  const at::Tensor out64 = shifted_by_plugin(*shift, x64);
  CHECK(out64.scalar_type() == at::kDouble);  // copied back to the input's type by tensor_copy
  CHECK(torch::allclose(out64, (x64 + 0.25).clamp(0, 1), 1e-6, 1e-6));
}

TEST_CASE("on a CUDA device: tensor_zeros and tensor_copy place tensors there, c_shift works", "[cuda][dlpack]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device here: this test checks nothing on this machine");
    return;
  }
  CHECK(zeros({2, 3}, CFAMC_DTYPE_FLOAT32, "cuda:0").is_cuda());
  cfamc_context ctx;
  ctx.device = "cuda:0";
  CHECK(zeros({2}, CFAMC_DTYPE_INT32, nullptr, &ctx).is_cuda());
  const at::Tensor x = torch::rand({2, 3, 4, 4}, torch::kCUDA);
  CHECK(copy(x, "cpu", CFAMC_DTYPE_SAME).is_cpu());
  CHECK(copy(x.cpu(), "cuda:0", CFAMC_DTYPE_FLOAT16).is_cuda());
  exported(x, [&](const DLTensor& t) {
    check_compact(t);
    CHECK(t.device.device_type == kDLCUDA);
  });
  auto shift = c_shift(0.25, "cuda:0");
  const at::Tensor out = shifted_by_plugin(*shift, x);
  CHECK(out.is_cuda());
  CHECK(torch::allclose(out, (x + 0.25).clamp(0, 1)));
}
