#include "augment/views.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "augment/colour_jitter.hpp"
#include <cfamc/transfer.hpp>
#include "failure.hpp"

namespace cfamc::host {
namespace {

at::Tensor uniform(int64_t n, double low, double high, at::Generator& g) {
  return at::rand({n}, g, at::TensorOptions().dtype(at::kDouble)) * (high - low) + low;
}

at::Tensor bernoulli(int64_t n, double p, at::Generator& g) {
  return at::rand({n}, g, at::TensorOptions().dtype(at::kDouble)).lt(p);
}

// Per-sample column vector [N,1,1,1] for broadcasting over images.
at::Tensor per_sample(const at::Tensor& v) { return v.view({-1, 1, 1, 1}); }

// Crop (and flip) then resize with one bilinear grid_sample: an affine map from each output pixel centre
// into its box, align_corners=False, as interpolating the cropped patch would (without antialiasing). The
// maps are made on the CPU from the CPU draws and reach the device in one transfer.
at::Tensor crop_flip_resize(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& flip, int64_t size) {
  const int64_t n = x.size(0);
  const double height = static_cast<double>(x.size(2)), width = static_cast<double>(x.size(3));
  const at::Tensor b = boxes.to(at::kDouble);
  const at::Tensor top = b.select(1, 0), left = b.select(1, 1), h = b.select(1, 2), w = b.select(1, 3);
  const at::Tensor sign = 1 - 2 * flip.to(at::kDouble);
  at::Tensor theta = at::zeros({n, 2, 3}, at::kDouble);
  theta.select(1, 0).select(1, 0).copy_(sign * w / width);
  theta.select(1, 0).select(1, 2).copy_((2 * left + w) / width - 1);
  theta.select(1, 1).select(1, 1).copy_(h / height);
  theta.select(1, 1).select(1, 2).copy_((2 * top + h) / height - 1);
  const at::Tensor grid =
      at::affine_grid_generator(cfamc::on_device_of(x, theta).to(x.scalar_type()), {n, x.size(1), size, size}, false);
  return at::grid_sampler(x, grid, /*bilinear*/ 0, /*border*/ 1, /*align_corners=*/false);
}

// torchvision's RandomCrop(size, padding, fill=0) and then the flip, as two gathers from the batch padded
// once: each output pixel is a copy of the padded image's pixel (no resampling), so the window is exact,
// zero where it overlaps the padding, and a float input stays differentiable. `params` holds int64 rows of
// (top, left, flip) on the images' device, the offsets counted in the padded image.
at::Tensor pad_crop_flip(const at::Tensor& x, const at::Tensor& params, int64_t padding, int64_t size) {
  const int64_t n = x.size(0), c = x.size(1);
  const at::Tensor padded = at::constant_pad_nd(x, {padding, padding, padding, padding}, 0);
  const at::Tensor steps = at::arange(size, params.options()).unsqueeze(0);  // [1, size]
  const at::Tensor rows = params.select(1, 0).unsqueeze(1) + steps;         // [n, size]
  // A flipped window reads its columns right to left: out[j] = window[size-1-j].
  const at::Tensor flipped = params.select(1, 2).unsqueeze(1).ne(0);
  const at::Tensor cols = params.select(1, 1).unsqueeze(1) + at::where(flipped, size - 1 - steps, steps);
  const at::Tensor row_index = rows.view({n, 1, size, 1}).expand({n, c, size, padded.size(3)});
  const at::Tensor col_index = cols.view({n, 1, 1, size}).expand({n, c, size, size});
  return padded.gather(2, row_index).gather(3, col_index);
}

// The padded crop's parameters: offsets uniform over every window position of the padded image, as
// torchvision's RandomCrop.get_params draws them, refused when the window does not fit. int64 [n, 3] rows of
// (top, left, flip) on the CPU, the offsets counted in the padded image.
at::Tensor padded_crop_params(const ViewRecipe& r, int64_t height, int64_t width, const at::Tensor& flip,
                              at::Generator& g) {
  const int64_t n = flip.size(0);
  const int64_t spare_h = height + 2 * r.padding - r.size, spare_w = width + 2 * r.padding - r.size;
  if (spare_h < 0 || spare_w < 0) {
    // Only here is the image size known; the run stops before its first step.
    fail(ExitCode::usage, "views." + r.name + ".size = " + std::to_string(r.size) + " exceeds the image (" +
                              std::to_string(height) + "x" + std::to_string(width) + ") plus 2*views." +
                              r.name + ".padding = " + std::to_string(2 * r.padding));
  }
  const at::Tensor u = at::rand({n, 2}, g, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor top = (u.select(1, 0) * static_cast<double>(spare_h + 1)).floor();
  const at::Tensor left = (u.select(1, 1) * static_cast<double>(spare_w + 1)).floor();
  return at::stack({top, left, flip.to(at::kDouble)}, 1).to(at::kLong);
}

// Separable Gaussian kernels, double [n, k], the identity where a view is not blurred. k is odd and below
// twice the view's side `size` (reflect padding needs k/2 < side).
at::Tensor blur_kernels(const ViewRecipe& r, int64_t n, at::Generator& g) {
  int64_t k = r.blur_kernel;
  if (k == 0) k = 2 * static_cast<int64_t>(std::ceil(3 * r.blur_sigma[1])) + 1;
  if (k >= 2 * r.size) k = 2 * r.size - 1;
  const at::Tensor apply = bernoulli(n, r.blur, g);
  const at::Tensor sigma = uniform(n, r.blur_sigma[0], r.blur_sigma[1], g);
  const at::Tensor offsets = at::arange(k, at::kDouble) - (k / 2);
  at::Tensor kernel = (-(offsets.pow(2)).unsqueeze(0) / (2 * sigma.pow(2)).unsqueeze(1)).exp();
  kernel = kernel / kernel.sum(1, true);
  const at::Tensor identity = offsets.eq(0).to(at::kDouble).unsqueeze(0).expand({n, k});
  return at::where(apply.unsqueeze(1), kernel, identity);
}

at::Tensor gaussian_blur(const at::Tensor& x, const at::Tensor& kernels) {
  const int64_t n = x.size(0), c = x.size(1), k = kernels.size(1);
  const at::Tensor kernel = cfamc::on_device_of(x, kernels).to(x.scalar_type());
  const at::Tensor weights = kernel.repeat_interleave(c, 0);  // [n*c, k]
  const int64_t pad = k / 2;
  at::Tensor y = x.reshape({1, n * c, x.size(2), x.size(3)});
  y = at::reflection_pad2d(y, {pad, pad, 0, 0});
  y = at::conv2d(y, weights.view({n * c, 1, 1, k}), at::Tensor(), at::IntArrayRef{1, 1}, at::IntArrayRef{0, 0}, at::IntArrayRef{1, 1}, n * c);
  y = at::reflection_pad2d(y, {0, 0, pad, pad});
  y = at::conv2d(y, weights.view({n * c, 1, k, 1}), at::Tensor(), at::IntArrayRef{1, 1}, at::IntArrayRef{0, 0}, at::IntArrayRef{1, 1}, n * c);
  return y.view_as(x);
}

// Every random parameter of one make_views call, drawn on the CPU for all count*batch views of the global
// batch (view-major rows) before any is applied, so that a share of the batch keeps its own rows of them.
struct ViewDraws {
  at::Tensor flip;    // bool [n]
  at::Tensor window;  // padded crop: int64 [n, 3] (top, left, flip); RandomResizedCrop: int64 [n, 4] boxes
  std::optional<ColourJitterDraw> jitter;
  at::Tensor gray;      // bool [n]; undefined when grayscale never applies
  at::Tensor blur;      // double [n, k] kernels; undefined when blur never applies
  at::Tensor solarize;  // bool [n]; undefined when solarize never applies
};

// The draws in the order make_views has always made them (part of the views' reproducibility). `image`
// holds the input's sizes [C, H, W].
ViewDraws draw_views(const ViewRecipe& r, int64_t n, at::IntArrayRef image, at::Generator& g) {
  ViewDraws d;
  d.flip = bernoulli(n, r.flip, g);
  if (r.padding > 0) d.window = padded_crop_params(r, image[1], image[2], d.flip, g);
  else if (r.crop) d.window = sample_crop_boxes(image[1], image[2], n, r.scale, r.ratio, g);
  if (r.jitter > 0) d.jitter = draw_colour_jitter(n, r, g);
  if (r.grayscale > 0 && image[0] == 3) d.gray = bernoulli(n, r.grayscale, g);
  if (r.blur > 0) d.blur = blur_kernels(r, n, g);
  if (r.solarize > 0) d.solarize = bernoulli(n, r.solarize, g);
  return d;
}

// The draws of the views in `rows` (int64, on the CPU), in that order.
ViewDraws rows_of(const ViewDraws& d, const at::Tensor& rows) {
  const auto pick = [&](const at::Tensor& t) { return t.defined() ? t.index_select(0, rows) : t; };
  ViewDraws kept{pick(d.flip), pick(d.window), std::nullopt, pick(d.gray), pick(d.blur), pick(d.solarize)};
  if (d.jitter) kept.jitter = ColourJitterDraw{pick(d.jitter->apply), pick(d.jitter->factors), pick(d.jitter->order)};
  return kept;
}

// The global batch's view rows v*batch + [begin, end) for every view v, view-major.
at::Tensor share_rows(const BatchShare& share, int64_t count, int64_t images) {
  if (share.begin < 0 || share.begin >= share.end || share.end > share.batch || share.end - share.begin != images) {
    fail(ExitCode::other, "make_views: the share [" + std::to_string(share.begin) + ", " + std::to_string(share.end) +
                              ") of a batch of " + std::to_string(share.batch) + " does not hold the " +
                              std::to_string(images) + " images given");
  }
  const at::Tensor within = at::arange(share.begin, share.end, at::kLong).unsqueeze(0);
  return (at::arange(count, at::kLong).unsqueeze(1) * share.batch + within).flatten();
}

// `x` float [n, C, H, W] in [0,1], one row per view; `d` the draws of those rows.
at::Tensor apply_views(const ViewRecipe& r, at::Tensor x, const ViewDraws& d) {
  if (r.padding > 0) {
    x = pad_crop_flip(x, cfamc::on_device_of(x, d.window), r.padding, r.size);  // one transfer
  } else if (r.crop) {
    x = crop_flip_resize(x, d.window, d.flip, r.size);
  } else {
    if (x.size(2) != r.size || x.size(3) != r.size) {
      x = at::upsample_bilinear2d(x, {r.size, r.size}, /*align_corners=*/false);
    }
    if (r.flip > 0) x = at::where(per_sample(cfamc::on_device_of(x, d.flip)), x.flip({3}), x);
  }
  if (d.jitter) x = apply_colour_jitter(x, *d.jitter);
  if (d.gray.defined()) x = at::where(per_sample(cfamc::on_device_of(x, d.gray)), to_gray(x).expand_as(x), x);
  if (d.blur.defined()) x = gaussian_blur(x, d.blur);
  if (d.solarize.defined()) {
    const at::Tensor solarize = per_sample(cfamc::on_device_of(x, d.solarize));
    x = at::where(solarize & x.ge(r.solarize_threshold), 1.0 - x, x);
  }
  return x;
}

}  // namespace

at::Tensor sample_crop_boxes(int64_t height, int64_t width, int64_t n, const std::array<double, 2>& scale,
                             const std::array<double, 2>& ratio, at::Generator& g) {
  constexpr int64_t kAttempts = 10;
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const double area = static_cast<double>(height * width);
  const at::Tensor target = area * (at::rand({n, kAttempts}, g, options) * (scale[1] - scale[0]) + scale[0]);
  const double log_low = std::log(ratio[0]), log_high = std::log(ratio[1]);
  const at::Tensor aspect = (at::rand({n, kAttempts}, g, options) * (log_high - log_low) + log_low).exp();
  const at::Tensor w = (target * aspect).sqrt().round(), h = (target / aspect).sqrt().round();
  const at::Tensor valid = w.gt(0) & w.le(width) & h.gt(0) & h.le(height);
  const at::Tensor first = valid.to(at::kInt).argmax(1, true);
  const at::Tensor found = valid.any(1);

  // torchvision's fallback: the whole image, clamped to the ratio range, centred.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  double fw = width, fh = height;
  if (in_ratio < ratio[0]) fh = std::round(fw / ratio[0]);
  else if (in_ratio > ratio[1]) fw = std::round(fh * ratio[1]);
  const at::Tensor box_w = at::where(found, w.gather(1, first).squeeze(1), at::full({n}, fw, options));
  const at::Tensor box_h = at::where(found, h.gather(1, first).squeeze(1), at::full({n}, fh, options));
  const at::Tensor u = at::rand({n, 2}, g, options);
  at::Tensor top = (u.select(1, 0) * (height - box_h + 1)).floor();
  at::Tensor left = (u.select(1, 1) * (width - box_w + 1)).floor();
  top = at::where(found, top, ((height - box_h) / 2).floor());
  left = at::where(found, left, ((width - box_w) / 2).floor());
  return at::stack({top, left, box_h, box_w}, 1).to(at::kLong);
}

at::Tensor make_views(const ViewRecipe& r, const at::Tensor& images, at::Generator& g,
                      const std::optional<BatchShare>& share) {
  // The draws are made for the whole batch whatever the share, then the share's rows kept.
  const int64_t batch = share ? share->batch : images.size(0);
  ViewDraws draws = draw_views(r, r.count * batch, images.sizes().slice(1), g);
  if (share) draws = rows_of(draws, share_rows(*share, r.count, images.size(0)));
  // uint8 images are scaled to [0,1]; float images are taken as [0,1] already and stay differentiable, so an
  // attack can reach through the views (multicrop robust evaluation).
  at::Tensor x = images.is_floating_point() ? images : images.to(at::kFloat).div_(255.0);
  if (r.count > 1) x = x.repeat({r.count, 1, 1, 1});
  return apply_views(r, x, draws);
}

}  // namespace cfamc::host
