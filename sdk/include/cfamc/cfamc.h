/*
 * cfamc plugin ABI, version 1.4 (major 1; minor 1 appended tensor allocation to the host API and the
 * CFAMC_OPTION_ACCEPTS_NONFINITE modifier of option types; minor 2 the backbone's export_tensors and the
 * evaluator's save_classifier; minor 3 the backbone's stages, through the encoder and the host API; minor 4
 * the data-parallel services of the host API: rank, world size, SyncBatchNorm, differentiable collectives).
 *
 * This header is the whole contract between cfamc-host and a plugin library. It is C99 and names no C++
 * type, so a plugin may be written in C, C++ or anything that can export a C function.
 *
 * Rules that hold for every struct and function below (docs/abi.md explains them at length):
 *  - Every struct begins with `struct_size`, set by whoever fills the struct to sizeof(struct) as that side
 *    compiled it. Structs only ever grow at the end (minor version); a reader touches a field only when
 *    `struct_size` shows the writer knew it. A removed or reordered field is a new major version.
 *  - Errors are objects. Every fallible call returns `cfamc_error*`: NULL means success. Errors are made by
 *    the host (`cfamc_host_api.error_create`). An error returned to the caller passes ownership to it; an
 *    error a plugin receives from a host call and does not return must be released with `error_release`.
 *  - Ownership is written on every pointer: "borrowed" pointers are valid only for the duration of the call
 *    that hands them over; "owned" pointers pass to the receiver, who releases them.
 *  - Tensors are opaque handles (`cfamc_tensor*`) to the host's LibTorch tensors. A plugin built against
 *    the same LibTorch major.minor (checked via the build fingerprint) may treat a handle as `at::Tensor*`;
 *    any other plugin goes through the DLPack functions of the host API.
 *  - No C++ exception crosses this boundary, in either direction.
 */
#ifndef CFAMC_CFAMC_H
#define CFAMC_CFAMC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CFAMC_ABI_MAJOR 1
#define CFAMC_ABI_MINOR 4

/* The one symbol a plugin library exports; the ABI major is part of its name. */
#define CFAMC_PLUGIN_ENTRY_SYMBOL "cfamc_plugin_entry_v1"

#if defined(_WIN32)
#define CFAMC_EXPORT __declspec(dllexport)
#else
#define CFAMC_EXPORT __attribute__((visibility("default")))
#endif

/* ---- Opaque host objects ----------------------------------------------------------------------- */

typedef struct cfamc_error cfamc_error;     /* an error: code + message, made and freed by the host */
typedef struct cfamc_tensor cfamc_tensor;   /* a handle to one host tensor (a reference, not a copy) */
typedef struct cfamc_context cfamc_context; /* per-component host services: options, log, seed, device */
struct DLManagedTensor;                     /* from dlpack.h; only the DLPack functions use it */

typedef enum cfamc_error_code {
  CFAMC_ERROR_INVALID_ARGUMENT = 1, /* the caller passed something the callee cannot use */
  CFAMC_ERROR_OPTION = 2,           /* an option is missing, of the wrong type or out of range */
  CFAMC_ERROR_UNSUPPORTED = 3,      /* the request is valid but this component does not do it */
  CFAMC_ERROR_RUNTIME = 4,          /* the computation failed (shape mismatch, out of memory, ...) */
  CFAMC_ERROR_INTERNAL = 5          /* a bug: an invariant broke, an unexpected exception was caught */
} cfamc_error_code;

typedef enum cfamc_kind {
  CFAMC_KIND_BACKBONE = 1,
  CFAMC_KIND_OBJECTIVE = 2,
  CFAMC_KIND_ATTACK = 3,
  CFAMC_KIND_EVALUATOR = 4
} cfamc_kind;

/* Element types for the host API's tensor_zeros and tensor_copy (ABI 1.1). An enum of its own rather than
 * DLPack's DLDataType, so that this header stays free of dlpack.h; a tensor's DLPack export still reports its
 * type as DLPack's (code, bits, lanes). */
typedef enum cfamc_dtype {
  CFAMC_DTYPE_SAME = 0, /* tensor_copy only: the source's type */
  CFAMC_DTYPE_FLOAT32 = 1,
  CFAMC_DTYPE_FLOAT64 = 2,
  CFAMC_DTYPE_FLOAT16 = 3,
  CFAMC_DTYPE_BFLOAT16 = 4,
  CFAMC_DTYPE_UINT8 = 5,
  CFAMC_DTYPE_INT8 = 6,
  CFAMC_DTYPE_INT32 = 7,
  CFAMC_DTYPE_INT64 = 8,
  CFAMC_DTYPE_BOOL = 9
} cfamc_dtype;

typedef enum cfamc_log_level {
  CFAMC_LOG_DEBUG = 1,
  CFAMC_LOG_INFO = 2,
  CFAMC_LOG_WARN = 3,
  CFAMC_LOG_ERROR = 4
} cfamc_log_level;

/* ---- Declared options -------------------------------------------------------------------------- */

typedef enum cfamc_option_type {
  CFAMC_OPTION_BOOL = 1,
  CFAMC_OPTION_INT = 2,
  CFAMC_OPTION_FLOAT = 3,      /* also accepts integers and fraction strings such as "8/255" */
  CFAMC_OPTION_STRING = 4,
  CFAMC_OPTION_INT_LIST = 5,   /* a TOML array of integers */
  CFAMC_OPTION_FLOAT_LIST = 6, /* a TOML array of numbers (fraction strings allowed) */
  CFAMC_OPTION_STRING_LIST = 7, /* a TOML array of strings */
  /* ABI 1.1: a modifier, OR'ed into the `type` of a CFAMC_OPTION_FLOAT or CFAMC_OPTION_FLOAT_LIST
   * declaration: the option takes NaN and +/-inf (TOML's `nan`, `inf`, `-inf`, or the strings "nan",
   * "inf"). Without it the host refuses them as a run-file error, so a component reading a float option may
   * take it to be finite. A modifier of the type rather than a new field, so that `options` arrays keep
   * their 1.0 stride: a 1.0 host refuses only a declaration that uses it. An enumerator, so that the OR'ed
   * values lie within the enum's range in C++. */
  CFAMC_OPTION_ACCEPTS_NONFINITE = 0x100
} cfamc_option_type;

/* One option of a component. The host validates the component's table of the run file against these
 * declarations before `create`, fills in defaults, and serves the values through the context.
 * `options` of cfamc_component_desc is an array of these: this struct can never grow. */
typedef struct cfamc_option_decl {
  size_t struct_size;
  const char *name;          /* borrowed, static: the key in the component's table */
  cfamc_option_type type;
  const char *default_value; /* borrowed, static: a TOML value literal ("0.3", "true", "\"sgd\"",
                                "[2, 10]", "\"8/255\""); NULL makes the option required */
  const char *doc;           /* borrowed, static: one line for --list-plugins and docs/config.md */
} cfamc_option_decl;

/* ---- Named tensors, in and out ----------------------------------------------------------------- */

/* A read-only list of named tensors handed to a callee. All pointers borrowed for the call. */
typedef struct cfamc_named_tensors {
  size_t struct_size;
  size_t count;
  const char *const *names;
  cfamc_tensor *const *tensors;
} cfamc_named_tensors;

/* A place to put named tensors. `put` takes ownership of `tensor` (also when it fails) and copies `name`.
 * The sink itself is borrowed for the call that hands it over. */
typedef struct cfamc_tensor_sink {
  size_t struct_size;
  void *self;
  cfamc_error *(*put)(void *self, const char *name, cfamc_tensor *tensor);
} cfamc_tensor_sink;

/* What a named tensor of a component is, for the optimiser and the checkpoint. */
typedef enum cfamc_tensor_role {
  CFAMC_ROLE_PARAMETER = 1, /* trained by the host's optimiser and saved in checkpoints */
  CFAMC_ROLE_BUFFER = 2,    /* saved in checkpoints, not trained (BatchNorm running statistics) */
  CFAMC_ROLE_STATE = 3      /* saved in checkpoints, not trained, not moved by to_device (attack state) */
} cfamc_tensor_role;

/* Receives a component's named tensors. `tensor` is borrowed and aliases the component's own tensor:
 * the host may keep a reference with `tensor_retain`, update it in place (optimiser step, checkpoint
 * load) and read its gradient. */
typedef struct cfamc_tensor_visitor {
  size_t struct_size;
  void *self;
  void (*visit)(void *self, cfamc_tensor_role role, const char *name, const cfamc_tensor *tensor);
} cfamc_tensor_visitor;

/* ---- Callbacks the host hands to plugins (all borrowed for the duration of one call) -------------- */

/* Stages of a backbone (ABI 1.3). Stage 0 is the image input ([N,C,H,W] float in [0,1]; normalisation happens
 * inside, as in `forward`); stages 1..S are the outputs of the backbone's residual stages (the ResNets'
 * layer1..layerS, [N, C_k, H_k, W_k]); CFAMC_STAGE_FEATURE, a `to_stage` only, is the final feature [N, D],
 * what `forward` returns (after stage S: the pre-activation ResNets' last BatchNorm and ReLU, then pooling).
 * The last stage exists in `num_stage_copies` copies with parameters of their own, and `copy` selects one:
 * it decides stage S and all that follows it, so an output at stage S is continued with the copy that made
 * it. Copy 0 is the network `forward` runs, the one evaluators see and `cfamc-host export` writes. */
#define CFAMC_STAGE_FEATURE (-1)

/* Runs the backbone. `x`: images in [0,1], NCHW, float. `branch`: the BatchNorm set. `out_features`:
 * owned by the caller, with its autograd graph when grad mode is on. */
typedef struct cfamc_encoder {
  size_t struct_size;
  void *self;
  int64_t feature_dim;
  int32_t num_branches;
  cfamc_error *(*encode)(void *self, const cfamc_tensor *x, int32_t branch, cfamc_tensor **out_features);

  /* ---- Appended in ABI 1.3: check `struct_size` before reading (cfamc::Encoder does). */

  /* The backbone's stages S, or 0 when it offers none (a backbone without `forward_stages`, such as one
   * built against ABI 1.0-1.2); then `encode_stages` fails with an error naming the backbone. */
  int32_t num_stages;
  int32_t num_stage_copies; /* copies of stage S, at least 1; 0 when num_stages is 0 */
  /* The channels C_k of stage `stage` (0..S; CFAMC_STAGE_FEATURE: feature_dim); 0 for a stage the backbone
   * does not have. */
  int64_t (*stage_channels)(void *self, int32_t stage);
  /* Runs the backbone from `from_stage` (0..S) to `to_stage` (from_stage+1..S, or CFAMC_STAGE_FEATURE) with
   * copy `copy` (0..num_stage_copies-1) of the last stage. `x`: borrowed, the input at `from_stage` (at
   * stage 0, images in [0,1]). `out`: owned by the caller, with its autograd graph when grad mode is on,
   * through which gradients of any order reach `x` and the backbone's parameters. Out-of-range arguments:
   * CFAMC_ERROR_INVALID_ARGUMENT; a backbone without stages: CFAMC_ERROR_UNSUPPORTED. */
  cfamc_error *(*encode_stages)(void *self, const cfamc_tensor *x, int32_t branch, int32_t from_stage,
                                int32_t to_stage, int32_t copy, cfamc_tensor **out);
} cfamc_encoder;

/* What an attack maximises. `loss` maps candidate inputs (same names and shapes as the attacked inputs)
 * to a loss tensor with its autograd graph: a scalar, or one value per sample ([N]) so that attacks that
 * track per-sample progress (APGD) can. `logits` and `labels` exist only for classification oracles
 * (evaluation); they are NULL during self-supervised pre-training. */
typedef struct cfamc_oracle {
  size_t struct_size;
  void *self;
  cfamc_error *(*loss)(void *self, const cfamc_named_tensors *inputs, cfamc_tensor **out_loss);
  cfamc_error *(*logits)(void *self, const cfamc_named_tensors *inputs, cfamc_tensor **out_logits);
  const cfamc_tensor *labels; /* borrowed, int64 [N], or NULL */
} cfamc_oracle;

/* Which phase asks an objective for its loss. */
typedef enum cfamc_phase {
  CFAMC_PHASE_TRAIN = 1, /* the loss the optimiser minimises */
  CFAMC_PHASE_ATTACK = 2 /* the loss the attack maximises */
} cfamc_phase;

/* Which feature an evaluator asks the encoder service for. */
typedef enum cfamc_feature {
  CFAMC_FEATURE_BACKBONE = 1,      /* the backbone's output */
  CFAMC_FEATURE_REPRESENTATION = 2 /* the objective's `represent` of it (EMP-SSL's pre-feature) */
} cfamc_feature;

/* Services the host gives an evaluator for the duration of `evaluate`. */
typedef struct cfamc_eval_services {
  size_t struct_size;
  void *self;
  /* The named split: images uint8 NCHW and labels int64 [N], both owned by the caller, on the evaluation
   * device. "train": the labeled training images; "test"; "pretrain": every image the objective trains on,
   * row i being sample index i, label -1 where unlabeled (the same as "train" when all are labeled).
   * CFAMC_ERROR_INVALID_ARGUMENT for an unknown split. */
  cfamc_error *(*dataset)(void *self, const char *split, cfamc_tensor **out_images, cfamc_tensor **out_labels);
  /* The frozen or trainable encoder: images in [0,1] -> features (differentiable w.r.t. x). */
  cfamc_error *(*encode)(void *self, cfamc_feature which, const cfamc_tensor *x, cfamc_tensor **out_features);
  int64_t (*feature_dim)(void *self, cfamc_feature which);
  /* Backbone (and objective head) mode: 0 eval, 1 train. The host restores it after `evaluate`. */
  void (*set_encoder_training)(void *self, int32_t training);
  /* The encoder's trainable tensors, for evaluators that fine-tune it. */
  void (*encoder_tensors)(void *self, const cfamc_tensor_visitor *visitor);
  /* Views of images (uint8, or float in [0,1], then differentiable) built by the run file's view group
   * `group` ([V*N, C, S, S] float in [0,1], view-major), owned by the caller. */
  cfamc_error *(*make_views)(void *self, const char *group, const cfamc_tensor *images, cfamc_tensor **out_views);
  /* The attacks configured for this evaluator, by index, and running one of them. */
  size_t (*num_attacks)(void *self);
  const char *(*attack_id)(void *self, size_t index); /* borrowed, valid during `evaluate` */
  cfamc_error *(*attack)(void *self, const char *attack_id, const cfamc_oracle *oracle,
                         const cfamc_tensor *x, cfamc_tensor **out_x_adv);
  /* A metric for summary.json, under this evaluator's id; `key` may contain '/' for nesting
   * ("robust_accuracy/pgd20"). Accuracies are fractions in [0,1]. */
  void (*report)(void *self, const char *key, double value);
  /* A path inside the run directory where the evaluator may write `name`; copied into `buffer`.
   * Returns the length needed, excluding the terminating zero. */
  size_t (*artifact_path)(void *self, const char *name, char *buffer, size_t capacity);

  /* ---- Appended in ABI 1.2: check `struct_size` before calling. */

  /* Saves a classifier as the evaluator's artifact `name`: the encoder as it is now (every tensor
   * `encoder_tensors` visits) and `head`, a linear layer on the backbone feature ("weight" [C, D], "bias"
   * [C]), in the host's checkpoint format, which `cfamc-host export` turns into a torchvision-style model
   * (the head as `fc`). An error for a head of another shape, and for an encoder that has no tensors (the
   * raw-pixel control). */
  cfamc_error *(*save_classifier)(void *self, const char *name, const cfamc_named_tensors *head);
} cfamc_eval_services;

/* ---- The host API ------------------------------------------------------------------------------- */

/* Given to the plugin's entry function; valid until the library is unloaded. */
typedef struct cfamc_host_api {
  size_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;

  /* Errors. `error_create` copies `message`. `error_message` is borrowed until `error_release`. */
  cfamc_error *(*error_create)(cfamc_error_code code, const char *message);
  cfamc_error_code (*error_code)(const cfamc_error *error);
  const char *(*error_message)(const cfamc_error *error);
  void (*error_release)(cfamc_error *error);

  /* The context's component: its log (prefixed with plugin and component name), its seed (derived from
   * the run's seed and the component's place in the run file) and its device ("cpu", "cuda:0"). */
  void (*log)(const cfamc_context *ctx, cfamc_log_level level, const char *message);
  uint64_t (*seed)(const cfamc_context *ctx);
  size_t (*device)(const cfamc_context *ctx, char *buffer, size_t capacity); /* returns length needed */
  void *(*cuda_stream)(const cfamc_context *ctx); /* the current cudaStream_t, or NULL on the CPU */
  /* The feature dimension of the run's backbone, for objectives and evaluators that build heads on it in
   * `create`; 0 in the backbone's own context. */
  int64_t (*feature_dim)(const cfamc_context *ctx);

  /* Typed access to the component's options (validated and defaulted by the host before `create`).
   * A key the component did not declare, or a type other than declared: CFAMC_ERROR_OPTION. Strings are
   * borrowed for the life of the context. For lists, `out_count` receives the length; at most `capacity`
   * values are written. */
  cfamc_error *(*option_bool)(const cfamc_context *ctx, const char *key, int32_t *out);
  cfamc_error *(*option_int)(const cfamc_context *ctx, const char *key, int64_t *out);
  cfamc_error *(*option_float)(const cfamc_context *ctx, const char *key, double *out);
  cfamc_error *(*option_string)(const cfamc_context *ctx, const char *key, const char **out);
  cfamc_error *(*option_int_list)(const cfamc_context *ctx, const char *key, int64_t *out, size_t capacity,
                                  size_t *out_count);
  cfamc_error *(*option_float_list)(const cfamc_context *ctx, const char *key, double *out, size_t capacity,
                                    size_t *out_count);
  cfamc_error *(*option_string_list)(const cfamc_context *ctx, const char *key, const char **out,
                                     size_t capacity, size_t *out_count);

  /* Tensor handles. `tensor_from_aten` makes an owned handle referring to the same tensor as the
   * `at::Tensor` at `aten_tensor` (same LibTorch only); `tensor_aten` gives the `at::Tensor*` behind a
   * handle (borrowed for the handle's life). `tensor_retain` makes a second owned handle to the same
   * tensor; `tensor_release` drops one. */
  cfamc_tensor *(*tensor_from_aten)(const void *aten_tensor);
  const void *(*tensor_aten)(const cfamc_tensor *tensor);
  cfamc_tensor *(*tensor_retain)(const cfamc_tensor *tensor);
  void (*tensor_release)(cfamc_tensor *tensor);

  /* DLPack, for plugins without LibTorch (docs/abi.md: the DLPack version and what an export guarantees).
   * `tensor_to_dlpack`: an owned DLManagedTensor (call its deleter when done) that is always compact
   * row-major: `strides` present and contiguous, `byte_offset` 0. It shares the tensor's memory when the
   * tensor is contiguous (always so for tensors made by tensor_zeros and tensor_copy); a non-contiguous
   * tensor is exported as a contiguous copy, which writes do not reach. `tensor_from_dlpack` takes
   * ownership of `managed` (also on error); NULL strides mean compact row-major. */
  cfamc_error *(*tensor_to_dlpack)(const cfamc_tensor *tensor, struct DLManagedTensor **out_managed);
  cfamc_error *(*tensor_from_dlpack)(struct DLManagedTensor *managed, cfamc_tensor **out_tensor);

  /* ---- Appended in ABI 1.1. Check CFAMC_HOST_HAS(api, function) before calling: a 1.0 host lacks them. */

  /* A new tensor filled with zeros: `ndim` sizes at `shape` (each >= 0; `shape` may be NULL when ndim is 0),
   * element type `dtype` (not CFAMC_DTYPE_SAME), contiguous, outside any autograd graph, on `device`
   * ("cpu", "cuda:0") or, when `device` is NULL, on the device of the component `ctx` (then required).
   * `out` owned. Bad arguments: CFAMC_ERROR_INVALID_ARGUMENT; no memory: CFAMC_ERROR_RUNTIME. */
  cfamc_error *(*tensor_zeros)(const cfamc_context *ctx, const int64_t *shape, size_t ndim, cfamc_dtype dtype,
                               const char *device, cfamc_tensor **out);
  /* A deep copy of `tensor` in new, contiguous memory, detached from any autograd graph, on `device` (NULL:
   * the source's) as `dtype` (CFAMC_DTYPE_SAME: the source's). `out` owned. */
  cfamc_error *(*tensor_copy)(const cfamc_tensor *tensor, const char *device, cfamc_dtype dtype,
                              cfamc_tensor **out);

  /* ---- Appended in ABI 1.3. Check CFAMC_HOST_HAS(api, function) before calling. */

  /* The stages of the run's backbone as the objective's encoder will report them (cfamc_encoder's fields of
   * the same names), for an objective that builds a head on a stage, or needs copies of the last stage, in
   * `create` (and refuses a backbone without stages there). In the context of any component other than the
   * objective, and for a backbone that offers no stages: 0 for all three. */
  int32_t (*num_stages)(const cfamc_context *ctx);
  int32_t (*num_stage_copies)(const cfamc_context *ctx);
  int64_t (*stage_channels)(const cfamc_context *ctx, int32_t stage);

  /* ---- Appended in ABI 1.4: data-parallel runs (docs/architecture.md, "Data parallel"). Check
   * CFAMC_HOST_HAS(api, function) before calling; <cfamc/distributed.hpp> does, and acts as a single
   * process with an older host. They concern the whole process, so they take no context. */

  /* This process's rank (0..world_size-1) and the number of processes of the run (1 when it is not
   * data-parallel). Each process trains on its share of every minibatch. */
  int32_t (*world_rank)(void);
  int32_t (*world_size)(void);
  /* 1 when BatchNorm layers in training mode should normalise with the statistics of the global batch (the
   * run file's `[backbone] sync_bn` in a run of more than one process), else 0. */
  int32_t (*sync_batch_norm)(void);
  /* Collectives over every process of the run. Every process makes the same calls in the same order, with
   * tensors of the same shape (dim 0 included) and dtype on the run's device. `tensor` borrowed, `out`
   * owned. Differentiable: when grad mode is on and `tensor` requires grad, `out` carries an autograd graph
   * whose backward sums each process's gradient of `out` over the processes, so that a loss every process
   * computes on the gathered batch reaches each process's own rows (the host averages the weights'
   * gradients over the processes). In a single process `out` is `tensor` itself. A collective that fails or
   * outlasts the run's timeout (a process died or hangs): CFAMC_ERROR_RUNTIME naming it.
   * `all_gather`: the tensors of all processes concatenated along dim 0 in rank order.
   * `all_reduce_sum`: their elementwise sum. */
  cfamc_error *(*all_gather)(const cfamc_tensor *tensor, cfamc_tensor **out);
  cfamc_error *(*all_reduce_sum)(const cfamc_tensor *tensor, cfamc_tensor **out);
} cfamc_host_api;

/* Whether the host API table `api` (a const cfamc_host_api*) has the function `field`, which is appended
 * after ABI 1.0: a host of an older minor hands a shorter table. */
#define CFAMC_HOST_HAS(api, field)                                                        \
  ((api)->struct_size >= offsetof(cfamc_host_api, field) + sizeof((api)->field) && \
   (api)->field != NULL)

/* ---- Component function tables -------------------------------------------------------------------
 * Every table starts with the same lifecycle functions. `self` is the plugin's object made by `create`;
 * `ctx` is borrowed and stays valid until `destroy(self)` returns. Functions marked "optional" may be NULL
 * (or lie beyond `struct_size`); the host then uses the documented default.
 */

#define CFAMC_COMPONENT_LIFECYCLE                                                                         \
  size_t struct_size;                                                                                     \
  cfamc_error *(*create)(const cfamc_context *ctx, void **out_self);                                     \
  void (*destroy)(void *self);                                                                            \
  /* Visits parameters, buffers and state; optional (default: none). */                                  \
  void (*named_tensors)(void *self, const cfamc_tensor_visitor *visitor);                                 \
  /* Train (1) or eval (0) mode; optional (default: nothing to switch). */                               \
  void (*set_training)(void *self, int32_t training);                                                     \
  /* Moves parameters and buffers to `device` ("cpu", "cuda:0"); optional (default: nothing to move). */ \
  cfamc_error *(*to_device)(void *self, const char *device);

/* The fields every kind's table begins with; the host reads them through this type. */
typedef struct cfamc_component_vtable {
  CFAMC_COMPONENT_LIFECYCLE
} cfamc_component_vtable;

typedef struct cfamc_backbone_vtable {
  CFAMC_COMPONENT_LIFECYCLE
  int64_t (*feature_dim)(void *self);
  int32_t (*num_branches)(void *self); /* BatchNorm sets selectable by `branch`; at least 1 */
  /* x: borrowed, [N,C,H,W] float in [0,1]; normalisation happens inside. out_features: owned, [N, D]. */
  cfamc_error *(*forward)(void *self, const cfamc_tensor *x, int32_t branch, cfamc_tensor **out_features);
  /* Appended in ABI 1.2; optional (default: the parameters and buffers `named_tensors` visits, under their
   * own names). The tensors of this network as its reference implementation names them, with BatchNorm set
   * `branch` as the only one, for `cfamc-host export` (the ResNets: torchvision's names, so that
   * torchvision's model loads them with strict=True). Input normalisation is left out: the host records it
   * as metadata. Tensors are borrowed for the visit. */
  cfamc_error *(*export_tensors)(void *self, int32_t branch, const cfamc_tensor_visitor *visitor);

  /* Appended in ABI 1.3; optional, all four or none (default: the backbone offers no stages, and objectives
   * that need them fail naming it). Stages as described at CFAMC_STAGE_FEATURE: `num_stages` S (0: none
   * offered), `num_stage_copies` the copies of stage S (at least 1; their parameters are among the tensors
   * `named_tensors` visits, so they are trained and checkpointed; `export_tensors` gives copy 0 only),
   * `stage_channels` C_k of stage 0..S (CFAMC_STAGE_FEATURE: feature_dim; 0 for no such stage), and
   * `forward_stages` with the arguments and results of cfamc_encoder's `encode_stages`; from 0 to
   * CFAMC_STAGE_FEATURE with copy 0 it is `forward`. */
  int32_t (*num_stages)(void *self);
  int32_t (*num_stage_copies)(void *self);
  int64_t (*stage_channels)(void *self, int32_t stage);
  cfamc_error *(*forward_stages)(void *self, const cfamc_tensor *x, int32_t branch, int32_t from_stage,
                                 int32_t to_stage, int32_t copy, cfamc_tensor **out);
} cfamc_backbone_vtable;

typedef struct cfamc_objective_vtable {
  CFAMC_COMPONENT_LIFECYCLE
  /* The view groups of the run file this objective consumes, in order. `out_names` is borrowed for the
   * life of `self`. */
  size_t (*view_groups)(void *self, const char *const **out_names);
  /* The inputs (after `prepare`) an attack perturbs; each gets an adversarial counterpart. */
  size_t (*attacked_inputs)(void *self, const char *const **out_names);
  /* Optional (default: inputs = views, no targets). `views`: one tensor per view group, named by the
   * group. `sample_indices`: int64 [B], the dataset indices of the batch. Puts named inputs and targets
   * into `out`. */
  cfamc_error *(*prepare)(void *self, const cfamc_named_tensors *views, const cfamc_tensor *sample_indices,
                          const cfamc_tensor_sink *out);
  /* The loss: a scalar with its autograd graph, owned by the caller. `adversarial` holds one tensor per
   * attacked input, or is NULL when training clean. Named scalars (0-d tensors, not synchronised) go to
   * `log`, owned by the sink. */
  cfamc_error *(*loss)(void *self, const cfamc_encoder *encoder, const cfamc_named_tensors *clean,
                       const cfamc_named_tensors *adversarial, cfamc_phase phase, const cfamc_tensor_sink *log,
                       cfamc_tensor **out_loss);
  /* Optional (default: the backbone feature). The representation evaluators use; `out` owned. */
  cfamc_error *(*represent)(void *self, const cfamc_tensor *features, cfamc_tensor **out);
  int64_t (*representation_dim)(void *self, int64_t feature_dim); /* optional, with `represent` */
} cfamc_objective_vtable;

typedef struct cfamc_attack_vtable {
  CFAMC_COMPONENT_LIFECYCLE
  /* How many times the host replays each minibatch (free adversarial training); 1 for ordinary attacks.
   * When > 1 the host hands every training backward's input gradient to `observe`. */
  int32_t (*replays)(void *self);
  /* Adversarial counterparts of `inputs` (pixels in [0,1]) that maximise `oracle`. Puts one tensor per
   * input, same name, detached, into `out`. */
  cfamc_error *(*perturb)(void *self, const cfamc_oracle *oracle, const cfamc_named_tensors *inputs,
                          const cfamc_tensor_sink *out);
  /* Optional: the gradient of the training loss w.r.t. each adversarial input, after a backward pass. */
  cfamc_error *(*observe)(void *self, const cfamc_named_tensors *input_gradients);
} cfamc_attack_vtable;

typedef struct cfamc_evaluator_vtable {
  CFAMC_COMPONENT_LIFECYCLE
  cfamc_error *(*evaluate)(void *self, const cfamc_eval_services *services);
} cfamc_evaluator_vtable;

#undef CFAMC_COMPONENT_LIFECYCLE

/* ---- The plugin description --------------------------------------------------------------------- */

/* What the plugin was built against. The host refuses a plugin whose LibTorch major.minor, CUDA presence
 * or C++ ABI flag differ from its own. A plugin that does not use LibTorch's C++ API sets
 * `torch_version` to NULL and is not checked. */
typedef struct cfamc_build_fingerprint {
  size_t struct_size;
  const char *torch_version; /* "2.11.0", or NULL */
  const char *cuda_version;  /* "13.0", or "none" */
  int32_t cxx11_abi;         /* _GLIBCXX_USE_CXX11_ABI */
} cfamc_build_fingerprint;

typedef struct cfamc_component_desc {
  size_t struct_size;
  cfamc_kind kind;
  const char *name;    /* unique per kind across all loaded plugins: the run file's `plugin = "..."` */
  const char *summary; /* one line */
  const cfamc_option_decl *options;
  size_t num_options;
  const void *vtable; /* cfamc_backbone_vtable* etc., by kind */
} cfamc_component_desc;

/* Returned by the entry function; every pointer is borrowed, static, and valid while the library is
 * loaded. */
typedef struct cfamc_plugin_desc {
  size_t struct_size;
  uint32_t abi_major; /* CFAMC_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor;
  const char *name;
  const char *version;
  cfamc_build_fingerprint fingerprint;
  const cfamc_component_desc *components;
  size_t num_components;
} cfamc_plugin_desc;

/* The entry point. `host` is valid until the library is unloaded. It must not fail or throw; it may be
 * called more than once and must return the same description each time. */
typedef const cfamc_plugin_desc *(*cfamc_plugin_entry_fn)(const cfamc_host_api *host);

#ifdef __cplusplus
}
#endif

#endif /* CFAMC_CFAMC_H */
