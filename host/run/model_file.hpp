// What a checkpoint says about the networks it holds, and reading such a checkpoint back into a run's
// components. Every checkpoint carries a description of its backbone and objective (plugins, options, the
// plugin paths that found them), so that `export`, `--evaluate-only` and `[init]` can rebuild them and
// tell a checkpoint of another network from a matching one.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include <toml++/toml.h>

#include "plugins/components.hpp"
#include "run/assembly.hpp"
#include "run/run_config.hpp"

namespace cfamc::host {

// The key of the description inside a checkpoint (its TOML text as uint8).
inline constexpr const char* kModelDescriptionKey = "run/model.toml";

// [backbone] and [objective] as resolved (plugin and options), the plugin paths made absolute, and the
// BatchNorm set a classifier was evaluated with (`bn_branch`).
toml::table describe_model(const RunConfig& config, int32_t bn_branch = 0);
void add_model_description(TensorMap& tensors, const toml::table& description);
// The description in `saved`; nullopt for checkpoints written before descriptions existed.
std::optional<toml::table> model_description(const TensorMap& saved);

// A checkpoint the user names (--checkpoint, [init] checkpoint, export): Failure(usage) when it is missing
// or no regular file, Failure(data) when it is damaged or no checkpoint at all; `what` says who asked.
TensorMap open_checkpoint(const std::filesystem::path& file, const std::string& what);

// Failure(usage) when `saved` (from `file`) holds another backbone plugin than this run's `[backbone]`.
void check_same_backbone(const TensorMap& saved, const RunConfig& config, const std::filesystem::path& file);

// Whether the tensors saved under "<prefix>/" fit `component` (parameters, buffers, state): a tensor
// missing on either side, or of another shape, is Failure(usage) naming the file, the tensor and both shapes.
void check_component(const Component& component, const std::string& prefix, const TensorMap& saved,
                     const std::filesystem::path& file);
// Checks, then copies them into `component`; returns how many tensors were copied.
size_t load_component(Component& component, const std::string& prefix, const TensorMap& saved,
                      const std::filesystem::path& file);

// [init]'s checkpoint, opened and checked against the components it starts, nothing copied yet (so that a
// bad one stops a run before anything is evaluated or written, and --validate finds it); nullopt without
// [init]. Then the copy, logged.
std::optional<TensorMap> open_init_checkpoint(const RunConfig& config, const Assembly& assembly);
void apply_init_checkpoint(const RunConfig& config, const Assembly& assembly, const TensorMap& saved);

// The training step a checkpoint was written at (0 for artifacts without one).
int64_t checkpoint_step(const TensorMap& saved);

}  // namespace cfamc::host
