/* The guide's random_sign attack in plain C, without LibTorch: x + epsilon * s with a random sign s per
 * pixel, clamped to [0,1]. It reaches tensors only through the host API: each input is copied by the host
 * into a float32 CPU tensor (ABI 1.1), changed in place through DLPack, and copied back to the input's
 * device, so the plugin works on the GPU too without linking CUDA. */
#include <cfamc/cfamc.h>
#include <dlpack/dlpack.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cfamc_host_api *host; /* borrowed from the entry point; valid while the library is loaded */

typedef struct {
  double epsilon;
  uint64_t state; /* xorshift64*, seeded from the component's seed: reproducible, independent */
} random_sign;

static uint64_t next_random(random_sign *self) {
  self->state ^= self->state >> 12;
  self->state ^= self->state << 25;
  self->state ^= self->state >> 27;
  return self->state * 0x2545F4914F6CDD1DULL;
}

static cfamc_error *create(const cfamc_context *ctx, void **out_self) {
  /* Everything this plugin calls after ABI 1.0 is checked once, here, so an old host refuses it at
   * --validate with a clear message instead of failing mid-run. */
  if (!CFAMC_HOST_HAS(host, tensor_copy)) {
    return host->error_create(CFAMC_ERROR_UNSUPPORTED, "c_random_sign needs a host of plugin ABI 1.1 or newer");
  }
  random_sign *self = malloc(sizeof *self);
  if (!self) return host->error_create(CFAMC_ERROR_RUNTIME, "out of memory");
  cfamc_error *error = host->option_float(ctx, "epsilon", &self->epsilon);
  if (!error && self->epsilon < 0) error = host->error_create(CFAMC_ERROR_OPTION, "epsilon must not be negative");
  if (error) {
    free(self);
    return error;
  }
  self->state = host->seed(ctx) | 1; /* xorshift needs a state other than zero */
  *out_self = self;
  return NULL;
}

static void destroy(void *self) { free(self); }

static int32_t replays(void *self) {
  (void)self;
  return 1;
}

/* The device of an exported tensor as the host API names devices. */
static void device_name(DLDevice device, char *buffer, size_t capacity) {
  if (device.device_type == kDLCUDA) snprintf(buffer, capacity, "cuda:%d", (int)device.device_id);
  else snprintf(buffer, capacity, "cpu");
}

/* Adds the random signs to a float32 CPU tensor in place. Tensors the host makes are contiguous, so
 * their export shares their memory and is compact: element i is data[i]. */
static cfamc_error *add_signs(random_sign *self, cfamc_tensor *work) {
  DLManagedTensor *view = NULL;
  cfamc_error *error = host->tensor_to_dlpack(work, &view);
  if (error) return error;
  size_t count = 1;
  for (int d = 0; d < view->dl_tensor.ndim; ++d) count *= (size_t)view->dl_tensor.shape[d];
  float *data = (float *)view->dl_tensor.data;
  const float epsilon = (float)self->epsilon;
  for (size_t i = 0; i < count; ++i) {
    const float v = data[i] + ((next_random(self) >> 63) ? epsilon : -epsilon);
    data[i] = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
  }
  view->deleter(view);
  return NULL;
}

static cfamc_error *perturb_one(random_sign *self, const cfamc_tensor *x, cfamc_tensor **out) {
  DLManagedTensor *view = NULL;
  cfamc_error *error = host->tensor_to_dlpack(x, &view);
  if (error) return error;
  char device[32];
  device_name(view->dl_tensor.device, device, sizeof device);
  view->deleter(view);

  cfamc_tensor *work = NULL; /* owned: a private copy this plugin may write */
  error = host->tensor_copy(x, "cpu", CFAMC_DTYPE_FLOAT32, &work);
  if (!error) error = add_signs(self, work);
  if (!error && strcmp(device, "cpu") == 0) {
    *out = work; /* already where the input was */
    return NULL;
  }
  if (!error) error = host->tensor_copy(work, device, CFAMC_DTYPE_SAME, out);
  if (work) host->tensor_release(work);
  return error;
}

static cfamc_error *perturb(void *self, const cfamc_oracle *oracle, const cfamc_named_tensors *inputs,
                            const cfamc_tensor_sink *out) {
  (void)oracle; /* a baseline: it never asks the loss */
  for (size_t i = 0; i < inputs->count; ++i) {
    cfamc_tensor *adversarial = NULL;
    cfamc_error *error = perturb_one((random_sign *)self, inputs->tensors[i], &adversarial);
    if (!error) error = out->put(out->self, inputs->names[i], adversarial); /* put owns it, even on error */
    if (error) return error;
  }
  return NULL;
}

static const cfamc_attack_vtable table = {
    sizeof(cfamc_attack_vtable), create, destroy, NULL, NULL, NULL, replays, perturb, NULL};

static const cfamc_option_decl options[] = {
    {sizeof(cfamc_option_decl), "epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "perturbation size, in pixel units"}};

static const cfamc_component_desc components[] = {{sizeof(cfamc_component_desc), CFAMC_KIND_ATTACK,
                                                   "c_random_sign", "random +-epsilon per pixel (plain C)",
                                                   options, 1, &table}};

static const cfamc_plugin_desc desc = {sizeof(cfamc_plugin_desc),
                                       CFAMC_ABI_MAJOR,
                                       CFAMC_ABI_MINOR,
                                       "c_random_sign",
                                       "1.0.0",
                                       {sizeof(cfamc_build_fingerprint), NULL, "none", 0}, /* no LibTorch */
                                       components,
                                       1};

CFAMC_EXPORT const cfamc_plugin_desc *cfamc_plugin_entry_v1(const cfamc_host_api *api) {
  host = api;
  return &desc;
}
