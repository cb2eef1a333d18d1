// The host API table: the functions every plugin calls back into.
#include <ATen/DLConvertor.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>

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

cfamc_error* tensor_to_dlpack(const cfamc_tensor* t, DLManagedTensor** out) {
  try {
    *out = at::toDLPack(t->tensor);
    return nullptr;
  } catch (const std::exception& e) {
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string("tensor_to_dlpack: ") + e.what());
  }
}

cfamc_error* tensor_from_dlpack(DLManagedTensor* managed, cfamc_tensor** out) {
  try {
    *out = make_handle(at::fromDLPack(managed));
    return nullptr;
  } catch (const std::exception& e) {
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string("tensor_from_dlpack: ") + e.what());
  }
}

}  // namespace

cfamc_error* make_error(cfamc_error_code code, std::string message) {
  return new cfamc_error{code, std::move(message)};
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
      tensor_retain,          tensor_release,   tensor_to_dlpack, tensor_from_dlpack};
  return &api;
}

}  // namespace cfamc::host
