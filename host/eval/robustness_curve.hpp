// Accuracy against epsilon: built from an evaluator's robust accuracies and the epsilon each evaluation
// attack was configured with, kept in summary.json and drawn as an SVG in the evaluator's artifacts.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace cfamc::host {

struct CurvePoint {
  std::string attack;  // "clean" for the unattacked accuracy at epsilon 0, on the attacked images
  double epsilon;
  double accuracy;
};

// Points sorted by epsilon; empty when fewer than one attack reported.
std::vector<CurvePoint> robustness_curve(const nlohmann::json& metrics,
                                         const std::vector<std::pair<std::string, double>>& attack_epsilons);
nlohmann::json to_json(const std::vector<CurvePoint>& curve);
// A self-contained SVG line plot (accuracy in [0,1] against epsilon in 1/255 units).
void write_curve_svg(const std::vector<CurvePoint>& curve, const std::string& title, const std::filesystem::path& file);

}  // namespace cfamc::host
