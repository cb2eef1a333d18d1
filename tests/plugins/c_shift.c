/* A complete plugin in plain C with no LibTorch: an attack that moves every pixel up by `epsilon` and clamps
 * to [0,1]. It reads and makes tensors only through the host API's DLPack functions, so it proves that
 * path works; it ignores its oracle, which a real attack would not. */
#include <cfamc/cfamc.h>
#include <dlpack/dlpack.h>

#include <stdlib.h>
#include <string.h>

static const cfamc_host_api *host;

typedef struct {
  double epsilon;
} c_shift;

static cfamc_error *create(const cfamc_context *ctx, void **out_self) {
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

typedef struct {
  DLManagedTensor managed;
  int64_t *shape;
} owned_tensor;

static void delete_owned(DLManagedTensor *managed) {
  owned_tensor *owned = (owned_tensor *)managed;
  free(managed->dl_tensor.data);
  free(owned->shape);
  free(owned);
}

/* A new contiguous float32 CPU tensor: x + epsilon, clamped to [0,1]. */
static cfamc_error *shifted(const DLTensor *x, double epsilon, cfamc_tensor **out) {
  if (x->device.device_type != kDLCPU || x->dtype.code != kDLFloat || x->dtype.bits != 32) {
    return host->error_create(CFAMC_ERROR_UNSUPPORTED, "c_shift: needs float32 tensors on the CPU");
  }
  size_t count = 1;
  for (int d = 0; d < x->ndim; ++d) count *= (size_t)x->shape[d];
  owned_tensor *owned = calloc(1, sizeof(owned_tensor));
  float *data = malloc(count * sizeof(float));
  int64_t *shape = malloc((size_t)x->ndim * sizeof(int64_t));
  if (!owned || !data || !shape) {
    free(owned), free(data), free(shape);
    return host->error_create(CFAMC_ERROR_RUNTIME, "out of memory");
  }
  memcpy(shape, x->shape, (size_t)x->ndim * sizeof(int64_t));
  /* Walk the source with its strides (LibTorch exports them), write the result compact. */
  for (size_t i = 0; i < count; ++i) {
    size_t rest = i, offset = 0;
    for (int d = x->ndim - 1; d >= 0; --d) {
      const size_t index = rest % (size_t)x->shape[d];
      rest /= (size_t)x->shape[d];
      offset += index * (size_t)(x->strides ? x->strides[d] : 1);
    }
    const float v = ((const float *)x->data)[x->byte_offset / sizeof(float) + offset] + (float)epsilon;
    data[i] = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
  }
  owned->shape = shape;
  owned->managed.dl_tensor = (DLTensor){data, {kDLCPU, 0}, x->ndim, x->dtype, shape, NULL, 0};
  owned->managed.deleter = delete_owned;
  return host->tensor_from_dlpack(&owned->managed, out);
}

static cfamc_error *perturb(void *self, const cfamc_oracle *oracle, const cfamc_named_tensors *inputs,
                            const cfamc_tensor_sink *out) {
  (void)oracle;
  const double epsilon = ((c_shift *)self)->epsilon;
  for (size_t i = 0; i < inputs->count; ++i) {
    DLManagedTensor *view = NULL;
    cfamc_error *error = host->tensor_to_dlpack(inputs->tensors[i], &view);
    if (error) return error;
    cfamc_tensor *result = NULL;
    error = shifted(&view->dl_tensor, epsilon, &result);
    view->deleter(view);
    if (error) return error;
    error = out->put(out->self, inputs->names[i], result);
    if (error) return error;
  }
  return NULL;
}

static const cfamc_attack_vtable table = {
    sizeof(cfamc_attack_vtable), create, destroy, NULL, NULL, NULL, replays, perturb, NULL};

static const cfamc_option_decl options[] = {
    {sizeof(cfamc_option_decl), "epsilon", CFAMC_OPTION_FLOAT, "\"1/255\"", "shift added to every pixel"}};

static const cfamc_component_desc components[] = {{sizeof(cfamc_component_desc), CFAMC_KIND_ATTACK, "c_shift",
                                                   "adds epsilon to every pixel (plain C, DLPack)", options, 1,
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
