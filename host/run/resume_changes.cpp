#include "run/resume_changes.hpp"

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "failure.hpp"
#include "log.hpp"

namespace cfamc::host {
namespace {

// Keys a resumed run may change without losing exactness: they decide where and how often the run
// reports, and what it evaluates, not what it trains. An [attacks.<id>] the attack schedule trains with
// is training. [init] only starts a fresh run: a resume takes everything from its checkpoint.
bool free_to_change(const std::string& key, const std::set<std::string>& scheduled) {
  for (const char* prefix : {"run.dir", "run.device", "run.tensorboard", "run.backend", "run.timeout_s", "plugins.", "evaluate.", "train.log_every",
                             "train.checkpoint_every", "train.keep_checkpoints", "init.", "attack_sequences."}) {
    if (key.rfind(prefix, 0) == 0) return true;
  }
  if (key.rfind("attacks.", 0) != 0) return false;
  const std::string id = key.substr(8, key.find('.', 8) - 8);
  return scheduled.count(id) == 0;
}

std::set<std::string> scheduled_attacks(const toml::table& run) {
  std::set<std::string> ids;
  if (const toml::array* schedule = run["attack_schedule"].as_array())
    for (const auto& entry : *schedule) ids.insert(entry.as_table() ? (*entry.as_table())["attack"].value_or(std::string()) : "");
  return ids;
}

void flatten(const toml::node& node, const std::string& key, std::map<std::string, std::string>& out) {
  if (const toml::table* table = node.as_table()) {
    for (const auto& [name, child] : *table) flatten(child, key.empty() ? std::string(name.str()) : key + "." + std::string(name.str()), out);
  } else if (const toml::array* array = node.as_array(); array && array->is_array_of_tables()) {
    for (size_t i = 0; i < array->size(); ++i) flatten(*array->get(i), key + "." + std::to_string(i), out);
  } else {
    std::ostringstream text;
    node.visit([&](const auto& value) { text << value; });
    out[key] = text.str();
  }
}

}  // namespace

std::vector<std::string> changed_training_keys(const toml::table& before, const toml::table& now) {
  std::map<std::string, std::string> a, b;
  flatten(before, "", a);
  flatten(now, "", b);
  std::map<std::string, std::string> all = a;
  all.insert(b.begin(), b.end());
  std::set<std::string> scheduled = scheduled_attacks(before);
  scheduled.merge(scheduled_attacks(now));
  std::vector<std::string> changed;
  for (const auto& [key, _] : all) {
    if (free_to_change(key, scheduled)) continue;
    const std::string was = a.count(key) ? a[key] : "(absent)", is = b.count(key) ? b[key] : "(absent)";
    if (was != is) changed.push_back(key + ": " + was + " -> " + is);
  }
  return changed;
}

void check_resume_changes(const std::string& previous, const toml::table& now, bool accept) {
  if (!std::filesystem::exists(previous)) return;
  toml::table before;
  try {
    before = toml::parse_file(previous);
  } catch (const toml::parse_error& e) {
    log(LogLevel::warn, previous + " is not readable TOML; the run file's changes since the last start are not checked");
    return;
  }
  // Compared as written, so that both sides went through the same text form of their numbers.
  std::ostringstream written;
  written << now;
  const toml::table current = toml::parse(written.str());
  const std::string attack_before = before["attack"]["plugin"].value_or(std::string("none"));
  const std::string attack_now = current["attack"]["plugin"].value_or(std::string("none"));
  if (attack_before != attack_now) {
    log(LogLevel::warn, "resuming with training attack '" + attack_now + "' (the run so far used '" + attack_before + "')");
  }
  std::vector<std::string> changed;
  for (const auto& change : changed_training_keys(before, current)) {
    if (change.rfind("attack.", 0) == 0) log(LogLevel::warn, "resuming with a changed training attack: " + change);
    else changed.push_back(change);
  }
  if (changed.empty()) return;
  if (accept) {
    for (const auto& change : changed) log(LogLevel::warn, "resuming with a changed run file (--accept-changes): " + change);
    return;
  }
  std::string list;
  for (const auto& change : changed) list += (list.empty() ? "" : "; ") + change;
  fail(ExitCode::usage, "resume: the run file changed " + std::to_string(changed.size()) +
                            " key(s) the training depends on since " + previous + " (" + list +
                            "); the resumed run would not be the one it continues. Restore them, or pass "
                            "--accept-changes to resume anyway");
}

}  // namespace cfamc::host
