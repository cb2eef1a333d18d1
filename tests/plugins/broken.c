/* Plugins that are wrong on purpose, one per BROKEN_* definition, to test that the host refuses each with a
 * clear error instead of crashing. Plain C, no LibTorch: the ABI checks come before any tensor.
 * BROKEN_HEALTHY is the control: nothing wrong, the same component name. */
#include <cfamc/cfamc.h>

#include <stddef.h>

static cfamc_error *create(const cfamc_context *ctx, void **out_self) {
  (void)ctx;
  *out_self = (void *)1;
  return NULL;
}
static void destroy(void *self) { (void)self; }
static int32_t replays(void *self) {
  (void)self;
  return 1;
}
static cfamc_error *perturb(void *self, const cfamc_oracle *oracle, const cfamc_named_tensors *inputs,
                            const cfamc_tensor_sink *out) {
  (void)self, (void)oracle, (void)inputs, (void)out;
  return NULL;
}

static const cfamc_attack_vtable table = {
    sizeof(cfamc_attack_vtable), create, destroy, NULL, NULL, NULL, replays,
#ifdef BROKEN_MISSING_FUNCTION
    NULL,
#else
    perturb,
#endif
    NULL};

static const cfamc_component_desc components[] = {
    {sizeof(cfamc_component_desc), CFAMC_KIND_ATTACK, "broken", "a plugin that is wrong on purpose", NULL, 0, &table}};

static const cfamc_plugin_desc desc = {sizeof(cfamc_plugin_desc),
#ifdef BROKEN_DESCRIBED_MAJOR
                                       2,
#else
                                       CFAMC_ABI_MAJOR,
#endif
                                       CFAMC_ABI_MINOR,
                                       "broken",
                                       "0.0.1",
                                       {sizeof(cfamc_build_fingerprint),
#ifdef BROKEN_FOREIGN_FINGERPRINT
                                        "1.13.1", "11.7",
#else
                                        NULL, "none",
#endif
                                        1},
                                       components,
                                       1};

#if defined(BROKEN_ENTRY_V2)
CFAMC_EXPORT const cfamc_plugin_desc *cfamc_plugin_entry_v2(const cfamc_host_api *host) {
  (void)host;
  return &desc;
}
#elif defined(BROKEN_NO_ENTRY)
CFAMC_EXPORT int not_a_plugin(void) { return desc.num_components > 0; }
#else
CFAMC_EXPORT const cfamc_plugin_desc *cfamc_plugin_entry_v1(const cfamc_host_api *host) {
  (void)host;
  return &desc;
}
#endif
