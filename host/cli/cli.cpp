#include "cli/cli.hpp"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "cli/reference.hpp"
#include "run/run_config.hpp"
#include "failure.hpp"
#include "log.hpp"
#include "plugins/components.hpp"
#include "plugins/registry.hpp"
#include "dist/launch.hpp"
#include "run/assembly.hpp"
#include "run/data_parallel.hpp"
#include "run/evaluate_checkpoint.hpp"
#include "run/model_export.hpp"
#include "run/model_file.hpp"
#include "run/interruption.hpp"
#include "run/resolved_run.hpp"
#include "run/resume_changes.hpp"
#include "run/run_dir.hpp"
#include "run/trainer.hpp"

namespace cfamc::host {
namespace {

struct Options {
  std::string config;
  std::vector<std::string> overrides;
  std::vector<std::string> removals;
  bool validate = false;
  bool resume = false;
  int64_t until_step = 0;
  bool fresh = false;
  bool accept_changes = false;
  bool version = false;
  bool list_plugins = false;
  bool json = false;
  bool reference = false;
  bool evaluate_only = false;
  std::string checkpoint;
  bool controls = false;
  std::string export_out;
  int32_t bn_branch = -1;  // export: -1 means the checkpoint's own
  bool overwrite = false;
  std::string log_level = "info";
};

std::string version_text() {
  const Fingerprint& fp = host_fingerprint();
  std::ostringstream out;
  out << "cfamc-host " << CFAMC_VERSION << "\n"
      << "plugin ABI " << CFAMC_ABI_MAJOR << "." << CFAMC_ABI_MINOR << "\n"
      << "LibTorch " << fp.torch_version << " (CUDA " << fp.cuda_version << " build, C++11 ABI " << fp.cxx11_abi
      << ")\n"
      << "CUDA available: " << (at::hasCUDA() ? "yes" : "no") << "\n";
  return out.str();
}

// Creates every component once, so that a plugin that rejects an option value says so now.
int validate(const Options& options) {
  ResolvedRun r = resolve_run(options.config, options.overrides, options.removals);
  const Compute compute = resolve_compute(r.config);
  const Assembly assembly = assemble(r.config, r.registry, "cpu");
  view_groups_of(r.config, *assembly.objective);
  open_init_checkpoint(r.config, assembly);
  std::cout << r.config.file << ": ok (device " << compute.device << ", precision " << name_of(compute.precision)
            << ")\n";
  for (const auto& c : r.config.components) std::cout << "  " << c.label << " = " << c.plugin << "\n";
  return 0;
}

int run(const Options& options) {
  const std::optional<Launch> launch = launch_from_environment();
  ResolvedRun r = resolve_run(options.config, options.overrides, options.removals);
  const Compute compute = resolve_compute(r.config, launch ? launch->local_rank : 0);
  configure_device(compute);
  World* world = join_job(r.config, launch, compute);
  // Rank 0 writes the run directory; every other process keeps what it makes in a scratch one.
  std::optional<ScratchDirectory> scratch;
  if (world && world->rank() > 0) scratch.emplace(world->rank());
  const RunDirectory dir(scratch ? scratch->path() : std::filesystem::path(r.config.dir));
  const toml::table resolved = r.config.resolved();
  if (options.resume) check_resume_changes(dir.resolved().string(), resolved, options.accept_changes);
  std::ostringstream text;
  text << resolved << "\n";
  write_file_atomically(dir.resolved(), text.str());
  log(LogLevel::info, "run directory: " + (scratch ? r.config.dir + " (written by rank 0)" : dir.path().string()));
  watch_for_interruption();
  run_training(r.config, r.registry, RunRequest{compute, dir, options.resume, options.until_step, options.fresh, world});
  if (world) world->close();
  return 0;
}

int evaluate(const Options& options) {
  if (const auto launch = launch_from_environment(); launch && launch->world > 1) {
    fail(ExitCode::usage, "--evaluate-only runs in one process (the evaluators share their work across the processes of a "
                          "training job only); launch it without torchrun, or unset WORLD_SIZE");
  }
  ResolvedRun r = resolve_run(options.config, options.overrides, options.removals);
  const Compute compute = resolve_compute(r.config);
  configure_device(compute);
  const RunDirectory dir(r.config.dir);
  std::optional<std::filesystem::path> checkpoint;
  if (!options.checkpoint.empty()) checkpoint = options.checkpoint;
  evaluate_checkpoint(r.config, r.registry, EvaluateRequest{compute, dir, checkpoint, options.controls});
  return 0;
}

int export_command(const Options& options) {
  ExportRequest request{options.checkpoint, options.export_out, std::nullopt, options.overwrite};
  if (options.bn_branch >= 0) request.bn_branch = options.bn_branch;
  export_model(request);
  return 0;
}

int dispatch(const Options& options) {
  if (options.version) {
    std::cout << version_text();
    return 0;
  }
  if (options.list_plugins || options.reference) {
    std::vector<std::string> paths;
    if (!options.config.empty()) paths = resolve_host_sections(load_run_file(options.config, options.overrides, options.removals)).plugin_paths;
    const Registry registry = Registry::discover(plugin_search_path(paths), host_api());
    if (options.reference) std::cout << config_reference(registry);
    else if (options.json) std::cout << plugins_json(registry).dump(2) << "\n";
    else std::cout << plugins_table(registry);
    return 0;
  }
  if (!options.export_out.empty()) return export_command(options);
  if (options.config.empty()) fail(ExitCode::usage, "nothing to do: give --config FILE (see --help)");
  if (options.validate) return validate(options);
  return options.evaluate_only ? evaluate(options) : run(options);
}

// The options of a run: the run file, its overrides, and how the run starts and stops.
void add_run_options(CLI::App& app, Options& options) {
  app.add_option("-c,--config", options.config, "the run file (TOML)");
  app.add_option("--set", options.overrides, "override a run-file key: --set attack.steps=10 (repeatable)");
  app.add_option("--unset", options.removals,
                 "remove a run-file key or table before the --set overrides apply: --unset attack.replays (repeatable)");
  app.add_flag("--validate", options.validate, "resolve the run file and every plugin's options, then stop");
  CLI::Option* resume =
      app.add_flag("--resume", options.resume, "continue from the newest checkpoint in the run directory that verifies");
  app.add_option("--until-step", options.until_step, "checkpoint and stop after this training step (resume later)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--fresh", options.fresh,
               "start over in a run directory that holds a run (deletes the host's own outputs, nothing else)")
      ->excludes(resume);
  app.add_flag("--accept-changes", options.accept_changes,
               "with --resume: continue although the run file changed keys the training depends on (logged)")
      ->needs(resume);
}

// Evaluating or exporting a checkpoint, and what prints information instead of running.
void add_checkpoint_and_info_options(CLI::App& app, Options& options) {
  CLI::Option* evaluate_only =
      app.add_flag("--evaluate-only", options.evaluate_only,
                   "run only the [[evaluate]] entries on a checkpoint; results merge into summary.json under eval")
          ->excludes(app.get_option("--resume"));
  app.add_option("--checkpoint", options.checkpoint, "with --evaluate-only: the checkpoint (default: the newest in run.dir)")
      ->needs(evaluate_only);
  app.add_flag("--controls", options.controls, "with --evaluate-only: also the controls the evaluators ask for")
      ->needs(evaluate_only);
  CLI::App* exporter = app.add_subcommand(
      "export", "write a checkpoint's backbone (or a finetune classifier artifact) as safetensors, torchvision names");
  exporter->add_option("--checkpoint", options.checkpoint, "a checkpoint, or a classifier artifact")->required();
  exporter->add_option("--out", options.export_out, "the .safetensors file to write")->required();
  exporter->add_option("--bn-branch", options.bn_branch, "the BatchNorm set to export (default: the checkpoint's, else 0)")
      ->check(CLI::NonNegativeNumber);
  exporter->add_flag("--overwrite", options.overwrite, "replace --out when it exists");
  app.add_flag("--version", options.version, "print versions and CUDA availability");
  app.add_flag("--list-plugins", options.list_plugins, "list every plugin component found");
  app.add_flag("--json", options.json, "with --list-plugins: JSON output");
  app.add_flag("--config-reference", options.reference, "print the run-file reference (docs/config.md)");
  app.add_option("--log-level", options.log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
}

// The one error line and the exit code. A lost peer surfaces in whatever called the collective (a
// plugin's loss, the optimiser step): then the job's failure is what the process reports.
int report(ExitCode code, const std::string& message) {
  if (World::get() && World::get()->broken()) {
    std::cerr << "error: " << World::get()->failure() << "\n";
    return static_cast<int>(ExitCode::peer);
  }
  std::cerr << "error: " << message << "\n";
  return static_cast<int>(code);
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"cfamc-host: adversarially robust self-supervised learning, assembled from plugins"};
  Options options;
  add_run_options(app, options);
  add_checkpoint_and_info_options(app, options);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: " << e.what() << " (see --help)\n";
    return static_cast<int>(ExitCode::usage);
  }
  configure_logging(options.log_level);

  try {
    return dispatch(options);
  } catch (const Failure& e) {
    return report(e.code(), e.what());
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    return report(ExitCode::other, message.substr(0, message.find('\n')));
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory: a host allocation failed (smaller batch_size, views or subsets need less)\n";
    return static_cast<int>(ExitCode::other);
  } catch (const std::exception& e) {
    return report(ExitCode::other, e.what());
  }
}

}  // namespace cfamc::host
