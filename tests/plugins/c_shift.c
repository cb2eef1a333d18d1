/* A complete plugin in plain C with no LibTorch: an attack that moves every pixel up by `epsilon` and clamps
 * to [0,1]. It reads tensors through the host's DLPack export, relying on its guarantee (compact row-major,
 * byte_offset 0; docs/abi.md), and makes its result with the ABI 1.1 functions: a zero tensor it fills, on
 * the CPU as float32, copied by the host to the input's device and type when those differ. It ignores its
 * oracle, which a real attack would not. */
#include <cfamc/cfamc.h>
#include <dlpack/dlpack.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cfamc_host_api *host;

typedef struct {
  double epsilon;
} c_shift;

static cfamc_error *create(const cfamc_context *ctx, void **out_self) {
  if (!CFAMC_HOST_HAS(host, tensor_zeros) || !CFAMC_HOST_HAS(host, tensor_copy)) {
    return host->error_create(CFAMC_ERROR_UNSUPPORTED, "c_shift needs a host of plugin ABI 1.1 or newer");
  }
  c_shift *self = malloc(sizeof(c_shift));
  if (!self) return host->error_create(CFAMC_ERROR_RUNTIME, "out of memory");
  cfamc_error *error = host->option_float(ctx, "epsilon", &self->epsilon);
  if (error) {
    free(self);
    return error;
  }
  if (self->epsilon < 0) {
    free(self);
    return host->error_create(CFAMC_ERROR_OPTION, "epsilon must not be negative");
  }
  *out_self = self;
  return NULL;
}

static void destroy(void *self) { free(self); }

static int32_t replays(void *self) {
  (void)self;
  return 1;
}

static int is_cpu_float32(const DLTensor *t) {
  return t->device.device_type == kDLCPU && t->dtype.code == kDLFloat && t->dtype.bits == 32 && t->dtype.lanes == 1;
}

/* The dtype of an exported tensor as the host API names it; 0 (CFAMC_DTYPE_SAME) for one it does not. */
static cfamc_dtype dtype_of(DLDataType t) {
  if (t.code == kDLFloat && t.bits == 32) return CFAMC_DTYPE_FLOAT32;
  if (t.code == kDLFloat && t.bits == 64) return CFAMC_DTYPE_FLOAT64;
  if (t.code == kDLFloat && t.bits == 16) return CFAMC_DTYPE_FLOAT16;
  if (t.code == kDLBfloat && t.bits == 16) return CFAMC_DTYPE_BFLOAT16;
  return CFAMC_DTYPE_SAME;
}

/* `source` (compact float32 on the CPU) + epsilon, clamped, written into a new zero tensor. */
static cfamc_error *shifted(const DLTensor *source, double epsilon, cfamc_tensor **out) {
  cfamc_error *error = host->tensor_zeros(NULL, source->shape, (size_t)source->ndim, CFAMC_DTYPE_FLOAT32, "cpu", out);
  if (error) return error;
  DLManagedTensor *target = NULL;
  error = host->tensor_to_dlpack(*out, &target); /* a contiguous tensor: the export shares its memory */
  if (error) {
    host->tensor_release(*out);
    *out = NULL;
    return error;
  }
  size_t count = 1;
  for (int d = 0; d < source->ndim; ++d) count *= (size_t)source->shape[d];
  const float *in = (const float *)source->data;
  float *result = (float *)target->dl_tensor.data;
  for (size_t i = 0; i < count; ++i) {
    const float v = in[i] + (float)epsilon;
    result[i] = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
  }
  target->deleter(target);
  return NULL;
}

/* Exports `x` as compact float32 on the CPU: directly when it is so already, else through a host copy
 * (`*copy`, owned, to release after `*view`). */
static cfamc_error *cpu_float32_view(const cfamc_tensor *x, DLManagedTensor **view, cfamc_tensor **copy) {
  *copy = NULL;
  cfamc_error *error = host->tensor_to_dlpack(x, view);
  if (error || is_cpu_float32(&(*view)->dl_tensor)) return error;
  (*view)->deleter(*view);
  *view = NULL;
  error = host->tensor_copy(x, "cpu", CFAMC_DTYPE_FLOAT32, copy);
  if (!error) error = host->tensor_to_dlpack(*copy, view);
  return error;
}

/* x + epsilon, clamped, on x's device and of x's floating type. */
static cfamc_error *shift_one(const cfamc_tensor *x, double epsilon, cfamc_tensor **out) {
  DLManagedTensor *original = NULL;
  cfamc_error *error = host->tensor_to_dlpack(x, &original);
  if (error) return error;
  const DLDevice device = original->dl_tensor.device;
  const cfamc_dtype dtype = dtype_of(original->dl_tensor.dtype);
  const int already = is_cpu_float32(&original->dl_tensor);
  original->deleter(original);
  if (dtype == CFAMC_DTYPE_SAME) return host->error_create(CFAMC_ERROR_UNSUPPORTED, "c_shift: needs floating-point inputs");

  DLManagedTensor *view = NULL;
  cfamc_tensor *copy = NULL;
  cfamc_tensor *result = NULL;
  error = cpu_float32_view(x, &view, &copy);
  if (!error) error = shifted(&view->dl_tensor, epsilon, &result);
  if (view) view->deleter(view);
  if (copy) host->tensor_release(copy);
  if (error || already) {
    *out = result;
    return error;
  }
  char name[32];
  if (device.device_type == kDLCUDA) snprintf(name, sizeof name, "cuda:%d", (int)device.device_id);
  else snprintf(name, sizeof name, "cpu");
  error = host->tensor_copy(result, name, dtype, out);
  host->tensor_release(result);
  return error;
}

static cfamc_error *perturb(void *self, const cfamc_oracle *oracle, const cfamc_named_tensors *inputs,
                            const cfamc_tensor_sink *out) {
  (void)oracle;
  const double epsilon = ((c_shift *)self)->epsilon;
  for (size_t i = 0; i < inputs->count; ++i) {
    cfamc_tensor *result = NULL;
    cfamc_error *error = shift_one(inputs->tensors[i], epsilon, &result);
    if (!error) error = out->put(out->self, inputs->names[i], result);
    if (error) return error;
  }
  return NULL;
}

static const cfamc_attack_vtable table = {
    sizeof(cfamc_attack_vtable), create, destroy, NULL, NULL, NULL, replays, perturb, NULL};

static const cfamc_option_decl options[] = {
    {sizeof(cfamc_option_decl), "epsilon", CFAMC_OPTION_FLOAT, "\"1/255\"", "shift added to every pixel"}};

static const cfamc_component_desc components[] = {{sizeof(cfamc_component_desc), CFAMC_KIND_ATTACK, "c_shift",
                                                   "adds epsilon to every pixel (plain C, DLPack, ABI 1.1 allocation)", options, 1,
                                                   &table}};

static const cfamc_plugin_desc desc = {sizeof(cfamc_plugin_desc),
                                       CFAMC_ABI_MAJOR,
                                       CFAMC_ABI_MINOR,
                                       "c_shift",
                                       "0.1.0",
                                       {sizeof(cfamc_build_fingerprint), NULL, "none", 0},
                                       components,
                                       1};

CFAMC_EXPORT const cfamc_plugin_desc *cfamc_plugin_entry_v1(const cfamc_host_api *api) {
  host = api;
  return &desc;
}
