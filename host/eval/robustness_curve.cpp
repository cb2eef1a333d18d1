#include "eval/robustness_curve.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "files.hpp"

namespace cfamc::host {

std::vector<CurvePoint> robustness_curve(const nlohmann::json& metrics,
                                         const std::vector<std::pair<std::string, double>>& attack_epsilons) {
  std::vector<CurvePoint> curve;
  if (!metrics.contains("robust_accuracy")) return curve;
  for (const auto& [attack, epsilon] : attack_epsilons) {
    const auto& robust = metrics["robust_accuracy"];
    if (robust.contains(attack) && robust[attack].is_number()) curve.push_back({attack, epsilon, robust[attack].get<double>()});
  }
  if (curve.empty()) return curve;
  // The clean point is measured on the images the attacks saw, when they saw a subset.
  const nlohmann::json* clean = nullptr;
  if (metrics.contains("robust_subset") && metrics["robust_subset"].contains("clean_accuracy")) {
    clean = &metrics["robust_subset"]["clean_accuracy"];
  } else if (metrics.contains("accuracy")) {
    clean = &metrics["accuracy"];
  }
  if (clean != nullptr && clean->is_number()) curve.push_back({"clean", 0.0, clean->get<double>()});
  std::sort(curve.begin(), curve.end(), [](const CurvePoint& a, const CurvePoint& b) { return a.epsilon < b.epsilon; });
  return curve;
}

nlohmann::json to_json(const std::vector<CurvePoint>& curve) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : curve) out.push_back({{"attack", p.attack}, {"epsilon", p.epsilon}, {"accuracy", p.accuracy}});
  return out;
}

void write_curve_svg(const std::vector<CurvePoint>& curve, const std::string& title, const std::filesystem::path& file) {
  constexpr double kW = 480, kH = 320, kLeft = 56, kRight = 16, kTop = 36, kBottom = 48;
  const double max_eps = std::max(1.0 / 255, curve.back().epsilon) * 255.0;
  const auto x = [&](double eps) { return kLeft + (eps * 255.0 / max_eps) * (kW - kLeft - kRight); };
  const auto y = [&](double acc) { return kTop + (1.0 - acc) * (kH - kTop - kBottom); };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << kW << "' height='" << kH << "' font-family='sans-serif' font-size='12'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='" << kW / 2 << "' y='20' text-anchor='middle' font-size='14'>" << title << "</text>\n"
      << "<line x1='" << kLeft << "' y1='" << y(0) << "' x2='" << kW - kRight << "' y2='" << y(0) << "' stroke='black'/>\n"
      << "<line x1='" << kLeft << "' y1='" << y(0) << "' x2='" << kLeft << "' y2='" << y(1) << "' stroke='black'/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double acc = i / 4.0;
    svg << "<text x='" << kLeft - 6 << "' y='" << y(acc) + 4 << "' text-anchor='end'>" << acc << "</text>\n"
        << "<line x1='" << kLeft << "' y1='" << y(acc) << "' x2='" << kW - kRight << "' y2='" << y(acc) << "' stroke='#ddd'/>\n";
  }
  svg << "<text x='" << (kLeft + kW - kRight) / 2 << "' y='" << kH - 10 << "' text-anchor='middle'>epsilon (x 1/255)</text>\n"
      << "<text x='14' y='" << (kTop + kH - kBottom) / 2 << "' transform='rotate(-90 14 " << (kTop + kH - kBottom) / 2
      << ")' text-anchor='middle'>accuracy</text>\n<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='";
  for (const auto& p : curve) svg << x(p.epsilon) << "," << y(p.accuracy) << " ";
  svg << "'/>\n";
  for (const auto& p : curve) {
    char label[64];
    std::snprintf(label, sizeof(label), "%.3f", p.accuracy);
    svg << "<circle cx='" << x(p.epsilon) << "' cy='" << y(p.accuracy) << "' r='3' fill='#1f77b4'/>\n"
        << "<text x='" << x(p.epsilon) << "' y='" << y(p.accuracy) - 8 << "' text-anchor='middle'>" << label << "</text>\n"
        << "<text x='" << x(p.epsilon) << "' y='" << y(0) + 16 << "' text-anchor='middle'>" << p.epsilon * 255.0 << "</text>\n";
  }
  svg << "</svg>\n";
  std::filesystem::create_directories(file.parent_path());
  write_file_atomically(file, svg.str());
}

}  // namespace cfamc::host
