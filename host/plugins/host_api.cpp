// The host API table: the functions every plugin calls back into.
#include <ATen/DLConvertor.h>
#include <ATen/Functions.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "dist/world.hpp"
#include "failure.hpp"
#include "log.hpp"
#include "plugins/context.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {
namespace {

cfamc_error* error_create(cfamc_error_code code, const char* message) {
  return make_error(code, message ? message : "");
}
cfamc_error_code error_code(const cfamc_error* e) { return e->code; }
const char* error_message(const cfamc_error* e) { return e->message.c_str(); }
void error_release(cfamc_error* e) { delete e; }

void plugin_log(const cfamc_context* ctx, cfamc_log_level level, const char* message) {
  const LogLevel host_level = level == CFAMC_LOG_DEBUG  ? LogLevel::debug
                              : level == CFAMC_LOG_INFO ? LogLevel::info
                              : level == CFAMC_LOG_WARN ? LogLevel::warn
                                                        : LogLevel::error;
  log(host_level, "[" + ctx->label + " " + ctx->plugin + "] " + (message ? message : ""));
}

uint64_t seed(const cfamc_context* ctx) { return ctx->seed; }
int64_t feature_dim(const cfamc_context* ctx) { return ctx->feature_dim; }
int32_t num_stages(const cfamc_context* ctx) { return ctx->stages.count; }
int32_t num_stage_copies(const cfamc_context* ctx) { return ctx->stages.copies; }
int64_t stage_channels(const cfamc_context* ctx, int32_t stage) {
  const auto& channels = ctx->stages.channels;
  if (stage == CFAMC_STAGE_FEATURE) return ctx->stages.count > 0 ? ctx->feature_dim : 0;
  return stage >= 0 && static_cast<size_t>(stage) < channels.size() ? channels[stage] : 0;
}

size_t copy_text(const std::string& text, char* buffer, size_t capacity) {
  if (buffer != nullptr && capacity > 0) {
    const size_t n = std::min(text.size(), capacity - 1);
    std::memcpy(buffer, text.data(), n);
    buffer[n] = '\0';
  }
  return text.size();
}

size_t device(const cfamc_context* ctx, char* buffer, size_t capacity) {
  return copy_text(ctx->device, buffer, capacity);
}

void* cuda_stream(const cfamc_context* ctx) {
  const c10::Device dev(ctx->device);
  if (!dev.is_cuda()) return nullptr;
  c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  // A CUDA stream's native handle is its cudaStream_t.
  return reinterpret_cast<void*>(guard.getStream(dev).native_handle());
}

// The option `key` of the context, or an error naming the key and what was expected.
const toml::node* option(const cfamc_context* ctx, const char* key, cfamc_error** error) {
  const toml::node* node = key ? ctx->options.get(key) : nullptr;
  if (node == nullptr) {
    *error = make_error(CFAMC_ERROR_OPTION, ctx->label + "." + (key ? key : "(null)") +
                                                ": no such option declared by plugin '" + ctx->plugin + "'");
  }
  return node;
}

cfamc_error* wrong_type(const cfamc_context* ctx, const char* key, const char* expected) {
  return make_error(CFAMC_ERROR_OPTION,
                    ctx->label + "." + key + ": read as " + expected + " but declared as another type");
}

template <class T, class Read>
cfamc_error* scalar(const cfamc_context* ctx, const char* key, T* out, const char* expected, Read read) {
  cfamc_error* error = nullptr;
  const toml::node* node = option(ctx, key, &error);
  if (!node) return error;
  auto value = read(*node);
  if (!value) return wrong_type(ctx, key, expected);
  *out = static_cast<T>(*value);
  return nullptr;
}

cfamc_error* option_bool(const cfamc_context* ctx, const char* key, int32_t* out) {
  return scalar(ctx, key, out, "a boolean", [](const toml::node& n) { return n.value_exact<bool>(); });
}
cfamc_error* option_int(const cfamc_context* ctx, const char* key, int64_t* out) {
  return scalar(ctx, key, out, "an integer", [](const toml::node& n) { return n.value_exact<int64_t>(); });
}
cfamc_error* option_float(const cfamc_context* ctx, const char* key, double* out) {
  return scalar(ctx, key, out, "a float", [](const toml::node& n) { return n.value_exact<double>(); });
}
cfamc_error* option_string(const cfamc_context* ctx, const char* key, const char** out) {
  cfamc_error* error = nullptr;
  const toml::node* node = option(ctx, key, &error);
  if (!node) return error;
  const auto* s = node->as_string();
  if (!s) return wrong_type(ctx, key, "a string");
  *out = s->get().c_str();
  return nullptr;
}

template <class T, class Read>
cfamc_error* list(const cfamc_context* ctx, const char* key, T* out, size_t capacity, size_t* count,
                  const char* expected, Read read) {
  cfamc_error* error = nullptr;
  const toml::node* node = option(ctx, key, &error);
  if (!node) return error;
  const auto* array = node->as_array();
  if (!array) return wrong_type(ctx, key, expected);
  for (size_t i = 0; i < array->size(); ++i) {
    auto value = read(*array->get(i));
    if (!value) return wrong_type(ctx, key, expected);
    if (out != nullptr && i < capacity) out[i] = *value;
  }
  if (count) *count = array->size();
  return nullptr;
}

cfamc_error* option_int_list(const cfamc_context* ctx, const char* key, int64_t* out, size_t capacity,
                             size_t* count) {
  return list(ctx, key, out, capacity, count, "an integer list",
              [](const toml::node& n) { return n.value_exact<int64_t>(); });
}
cfamc_error* option_float_list(const cfamc_context* ctx, const char* key, double* out, size_t capacity,
                               size_t* count) {
  return list(ctx, key, out, capacity, count, "a float list",
              [](const toml::node& n) { return n.value_exact<double>(); });
}
cfamc_error* option_string_list(const cfamc_context* ctx, const char* key, const char** out, size_t capacity,
                                size_t* count) {
  return list(ctx, key, out, capacity, count, "a string list", [](const toml::node& n) -> std::optional<const char*> {
    if (const auto* s = n.as_string()) return s->get().c_str();
    return std::nullopt;
  });
}

cfamc_tensor* tensor_from_aten(const void* aten) { return make_handle(*static_cast<const at::Tensor*>(aten)); }
const void* tensor_aten(const cfamc_tensor* t) { return &t->tensor; }
cfamc_tensor* tensor_retain(const cfamc_tensor* t) { return make_handle(t->tensor); }
void tensor_release(cfamc_tensor* t) { delete t; }

// LibTorch's export of a contiguous tensor, wrapped so that the shape and strides handed out are the host's
// own: LibTorch exports a non-contiguous tensor with its real strides and normalises the strides of size-1
// dimensions differently across 2.x releases, while docs/abi.md promises compact row-major strides, always
// present, and byte_offset 0, which a plain-C plugin can index without walking strides.
struct CompactExport {
  DLManagedTensor managed;  // first: the plugin's DLManagedTensor* is this object
  DLManagedTensor* inner;   // owned: LibTorch's export, which keeps the tensor alive
  std::vector<int64_t> shape, strides;

  static void release(DLManagedTensor* managed) {
    auto* self = static_cast<CompactExport*>(managed->manager_ctx);
    if (self->inner->deleter) self->inner->deleter(self->inner);
    delete self;
  }
};

DLManagedTensor* compact_export(const at::Tensor& tensor) {
  auto export_ = std::make_unique<CompactExport>();
  export_->inner = at::toDLPack(tensor.contiguous());
  const DLTensor& inner = export_->inner->dl_tensor;
  export_->shape.assign(inner.shape, inner.shape + inner.ndim);
  export_->strides.assign(inner.ndim, 1);
  for (int d = inner.ndim - 2; d >= 0; --d) {
    export_->strides[d] = export_->strides[d + 1] * std::max<int64_t>(export_->shape[d + 1], 1);
  }
  DLTensor& out = export_->managed.dl_tensor;
  out = inner;
  out.data = static_cast<char*>(inner.data) + inner.byte_offset;
  out.byte_offset = 0;
  out.shape = export_->shape.data();
  out.strides = export_->strides.data();
  export_->managed.manager_ctx = export_.get();
  export_->managed.deleter = &CompactExport::release;
  return &export_.release()->managed;
}

cfamc_error* tensor_to_dlpack(const cfamc_tensor* t, DLManagedTensor** out) {
  if (t == nullptr || out == nullptr) return make_error(CFAMC_ERROR_INVALID_ARGUMENT, "tensor_to_dlpack: NULL argument");
  return guarded([&] { *out = compact_export(t->tensor); });
}

cfamc_error* tensor_from_dlpack(DLManagedTensor* managed, cfamc_tensor** out) {
  return guarded([&] { *out = make_handle(at::fromDLPack(managed)); });
}

std::optional<at::ScalarType> scalar_type(cfamc_dtype dtype) {
  switch (dtype) {
    case CFAMC_DTYPE_FLOAT32: return at::kFloat;
    case CFAMC_DTYPE_FLOAT64: return at::kDouble;
    case CFAMC_DTYPE_FLOAT16: return at::kHalf;
    case CFAMC_DTYPE_BFLOAT16: return at::kBFloat16;
    case CFAMC_DTYPE_UINT8: return at::kByte;
    case CFAMC_DTYPE_INT8: return at::kChar;
    case CFAMC_DTYPE_INT32: return at::kInt;
    case CFAMC_DTYPE_INT64: return at::kLong;
    case CFAMC_DTYPE_BOOL: return at::kBool;
    case CFAMC_DTYPE_SAME: break;
  }
  return std::nullopt;
}

// `name` as a device, or an error: a typo in a plugin is its caller's mistake, not a runtime failure.
cfamc_error* parse_device(const char* name, const char* function, std::optional<c10::Device>* out) {
  try {
    *out = c10::Device(name);
    return nullptr;
  } catch (const c10::Error&) {
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string(function) + ": '" + name + "' is not a device");
  }
}

cfamc_error* invalid(const char* function, const std::string& why) {
  return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string(function) + ": " + why);
}

cfamc_error* tensor_zeros(const cfamc_context* ctx, const int64_t* shape, size_t ndim, cfamc_dtype dtype,
                          const char* device, cfamc_tensor** out) {
  constexpr const char* fn = "tensor_zeros";
  if (out == nullptr || (shape == nullptr && ndim > 0)) return invalid(fn, "NULL argument");
  if (device == nullptr && ctx == nullptr) return invalid(fn, "no device and no context to take it from");
  const auto type = scalar_type(dtype);
  if (!type) return invalid(fn, "unknown dtype " + std::to_string(static_cast<int>(dtype)));
  std::vector<int64_t> sizes(shape, shape + ndim);
  for (int64_t size : sizes)
    if (size < 0) return invalid(fn, "negative size " + std::to_string(size));
  std::optional<c10::Device> where;
  if (cfamc_error* e = parse_device(device ? device : ctx->device.c_str(), fn, &where)) return e;
  return guarded([&] { *out = make_handle(at::zeros(sizes, at::TensorOptions().dtype(*type).device(*where))); });
}

cfamc_error* tensor_copy(const cfamc_tensor* t, const char* device, cfamc_dtype dtype, cfamc_tensor** out) {
  constexpr const char* fn = "tensor_copy";
  if (t == nullptr || out == nullptr) return invalid(fn, "NULL argument");
  const auto type = dtype == CFAMC_DTYPE_SAME ? std::optional(t->tensor.scalar_type()) : scalar_type(dtype);
  if (!type) return invalid(fn, "unknown dtype " + std::to_string(static_cast<int>(dtype)));
  std::optional<c10::Device> where = t->tensor.device();
  if (device != nullptr)
    if (cfamc_error* e = parse_device(device, fn, &where)) return e;
  return guarded([&] {
    *out = make_handle(t->tensor.detach().to(*where, *type, /*non_blocking=*/false, /*copy=*/true,
                                             at::MemoryFormat::Contiguous));
  });
}

// ---- ABI 1.4: data parallel (dist/world.hpp) ---------------------------------------------------------

int32_t world_rank() { return World::get() ? World::get()->rank() : 0; }
int32_t world_size() { return World::get() ? World::get()->size() : 1; }
int32_t sync_batch_norm() { return World::get() && World::get()->sync_batch_norm ? 1 : 0; }

template <class Collective>
cfamc_error* collective(const char* fn, const cfamc_tensor* tensor, cfamc_tensor** out, Collective body) {
  if (tensor == nullptr || out == nullptr) return invalid(fn, "NULL argument");
  return guarded([&] { *out = make_handle(body(tensor->tensor)); });
}

cfamc_error* all_gather(const cfamc_tensor* tensor, cfamc_tensor** out) {
  if (tensor != nullptr && tensor->tensor.dim() == 0) {
    return invalid("all_gather", "a 0-dimensional tensor (there is no dim 0 to concatenate along)");
  }
  return collective("all_gather", tensor, out, all_gather_differentiable);
}

cfamc_error* all_reduce_sum(const cfamc_tensor* tensor, cfamc_tensor** out) {
  return collective("all_reduce_sum", tensor, out, all_reduce_sum_differentiable);
}

}  // namespace

cfamc_error* make_error(cfamc_error_code code, std::string message) {
  return new cfamc_error{code, std::move(message)};
}

cfamc_error* error_from_current_exception() noexcept {
  try {
    throw;
  } catch (const Failure& e) {
    return make_error(e.code() == ExitCode::usage ? CFAMC_ERROR_OPTION : CFAMC_ERROR_RUNTIME, e.what());
  } catch (const c10::Error& e) {
    return make_error(CFAMC_ERROR_RUNTIME, e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return make_error(CFAMC_ERROR_RUNTIME, "out of memory");
  } catch (const std::exception& e) {
    return make_error(CFAMC_ERROR_RUNTIME, e.what());
  } catch (...) {
    return make_error(CFAMC_ERROR_INTERNAL, "an unknown exception");
  }
}

void check_plugin(cfamc_error* error, const std::string& who) {
  if (error == nullptr) return;
  // A plugin that rejects an option value points at the run file, not at itself.
  const ExitCode code = error->code == CFAMC_ERROR_OPTION ? ExitCode::usage : ExitCode::plugin;
  std::string message = who + ": " + error->message;
  delete error;
  fail(code, message);
}

const cfamc_host_api* host_api() {
  static const cfamc_host_api api = {
      sizeof(cfamc_host_api), CFAMC_ABI_MAJOR,  CFAMC_ABI_MINOR,  error_create,      error_code,
      error_message,          error_release,    plugin_log,              seed,              device,
      cuda_stream,            feature_dim,      option_bool,      option_int,       option_float,      option_string,
      option_int_list,        option_float_list, option_string_list, tensor_from_aten, tensor_aten,
      tensor_retain,          tensor_release,   tensor_to_dlpack, tensor_from_dlpack,
      // ABI 1.1
      tensor_zeros,           tensor_copy,
      // ABI 1.3
      num_stages,             num_stage_copies, stage_channels,
      // ABI 1.4
      world_rank,             world_size,       sync_batch_norm,  all_gather,       all_reduce_sum};
  return &api;
}

}  // namespace cfamc::host
