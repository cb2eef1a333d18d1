// Resuming with a changed run file. A resumed run is exact only if everything its training depends on is
// as it was; what it does not depend on (where logs go, how often, evaluation) may change freely, and the
// training attack may change with a warning (a documented use: switch attacks mid-run).
#pragma once

#include <string>
#include <vector>

#include <toml++/toml.h>

namespace cfamc::host {

// "key: before -> now" for every key of `before` and `now` (resolved run files) that the training depends
// on and that differs, in key order.
std::vector<std::string> changed_training_keys(const toml::table& before, const toml::table& now);

// Checks the run file a run resumes with against the one it ran with (`previous`, its resolved.toml; a
// missing file checks nothing): changed training keys are Failure(usage) naming every one, unless
// `accept`, when each is logged; a changed training attack ([attack]) is only logged.
void check_resume_changes(const std::string& previous, const toml::table& now, bool accept);

}  // namespace cfamc::host
