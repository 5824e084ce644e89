// covseg_ext::class_prob_pool — CPP pooling on the CPU, and the schema of the
// private op that the Python custom op covseg::class_prob_pool calls.
//
// out_s[b,k,i,j] = count_{(u,v) in window (i,j)}(labels[b,u,v] == k) / s²
// Layout: labels (B,H,W) contiguous; each output (B,K,H/s,W/s) contiguous fp32.
// Parallel over (b, band of max-scale rows); nested scales (2, 4, 8, 16) are all
// served by one pass over the labels, counting at the finest scale in int32 and
// summing counts for coarser ones, so results are exact (count / s² in fp32).
// at::parallel_for is only parallel when this file is compiled with -fopenmp
// (ATen's OpenMP backend is header-inline); setup.py adds it.
// Rules (the reference is the spec): a pixel equal to ignore_index counts for no
// class, even when ignore_index lies in [0, K); every other label outside [0, K)
// is an error, including labels in the rows/columns that the floor drops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <vector>

namespace covseg {

namespace {

// Sorted scales nest when each divides the next (2, 4, 8, 16): one pass over the
// labels then serves them all, coarser counts being sums of finer ones.
bool nested(const std::vector<int64_t>& sorted) {
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i] % sorted[i - 1] != 0) return false;
  return true;
}

struct BadLabel {
  std::atomic<bool> seen{false};
  std::atomic<int64_t> value{0};
  void report(int64_t v) {
    value.store(v);
    seen.store(true);
  }
};

// Labels that feed no output (the rows/columns past the last full fine cell) are
// still checked, so every backend rejects the same maps.
template <typename label_t>
void check_only(const label_t* row, int64_t n, int64_t K, std::optional<int64_t> ignore, BadLabel& bad) {
  for (int64_t v = 0; v < n; ++v) {
    const int64_t k = static_cast<int64_t>(row[v]);
    if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K) && !(ignore && k == *ignore)) bad.report(k);
  }
}

// One task = (image b, band of T rows). Counts at the finest scale s0 are
// accumulated as int32 over the band, then summed into each scale's cells.
// `scales` is sorted ascending and nested; T = scales.back().
// kS0 > 0 fixes the finest scale at compile time so `v / s0` becomes a shift.
template <typename label_t, int kS0>
void pool_nested(const label_t* labels, const std::vector<float*>& outs, const std::vector<int64_t>& scales,
                 int64_t B, int64_t H, int64_t W, int64_t K, std::optional<int64_t> ignore, BadLabel& bad) {
  const int64_t s0 = kS0 > 0 ? kS0 : scales.front(), T = scales.back();
  const int64_t bands = (H + T - 1) / T;
  const int64_t Rf = T / s0, Cf = W / s0;       // fine cells per band
  const int64_t rows_valid = (H / s0) * s0;     // rows past the last full fine cell feed no output
  const bool ignored_class = ignore && *ignore >= 0 && *ignore < K;
  at::parallel_for(0, B * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> counts(K * Rf * Cf);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, y0 = (task % bands) * T;
      std::fill(counts.begin(), counts.end(), 0);
      const int64_t plane = Rf * Cf;
      const int64_t width = Cf * s0;
      for (int64_t u = y0; u < std::min(y0 + T, H); ++u) {
        const label_t* row = labels + (b * H + u) * W;
        if (u >= rows_valid) {
          check_only(row, W, K, ignore, bad);
          continue;
        }
        int32_t* crow = counts.data() + ((u - y0) / s0) * Cf;
        // Pixel v of the row belongs to fine cell v / s0; walking v linearly keeps
        // the loads sequential (the division is strength-reduced by the compiler).
        // An in-range ignore_index is counted here like a class and zeroed below,
        // which keeps this loop free of a second compare.
        for (int64_t v = 0; v < width; ++v) {
          const int64_t k = static_cast<int64_t>(row[v]);
          if (static_cast<uint64_t>(k) < static_cast<uint64_t>(K)) {
            crow[k * plane + v / s0] += 1;
          } else if (!(ignore && k == *ignore)) {
            bad.report(k);
          }
        }
        check_only(row + width, W - width, K, ignore, bad);
      }
      for (size_t si = 0; si < scales.size(); ++si) {
        const int64_t s = scales[si], f = s / s0, Ho = H / s, Wo = W / s;
        const float area = static_cast<float>(s * s);  // divide (not multiply by 1/s²) to round as avg_pool2d does
        for (int64_t rr = 0; rr < T / s && y0 / s + rr < Ho; ++rr) {
          const int64_t oi = y0 / s + rr;
          for (int64_t k = 0; k < K; ++k) {
            float* dst = outs[si] + ((b * K + k) * Ho + oi) * Wo;
            if (ignored_class && k == *ignore) {  // its pixels count for no class
              std::fill(dst, dst + Wo, 0.0f);
              continue;
            }
            const int32_t* src = counts.data() + k * Rf * Cf + rr * f * Cf;
            for (int64_t oj = 0; oj < Wo; ++oj) {
              int32_t total = 0;
              for (int64_t a = 0; a < f; ++a)
                for (int64_t c = 0; c < f; ++c) total += src[a * Cf + oj * f + c];
              dst[oj] = static_cast<float>(total) / area;
            }
          }
        }
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> class_prob_pool_cpu(const at::Tensor& labels, int64_t num_classes, at::IntArrayRef scales,
                                            std::optional<int64_t> ignore_index) {
  TORCH_CHECK_VALUE(labels.dim() == 3, "class_prob_pool: labels must be (B, H, W)");
  TORCH_CHECK_VALUE(num_classes >= 1, "class_prob_pool: num_classes must be >= 1");
  const at::Tensor lab = labels.contiguous();
  const int64_t B = lab.size(0), H = lab.size(1), W = lab.size(2);
  std::vector<at::Tensor> outs;
  for (int64_t s : scales) {
    TORCH_CHECK_VALUE(s >= 1 && s <= H && s <= W, "class_prob_pool: scale ", s, " does not fit the label map ", H,
                      "x", W);
    outs.push_back(at::empty({B, num_classes, H / s, W / s}, lab.options().dtype(at::kFloat)));
  }
  // Group the requested scales: all of them in one pass when they nest, else one pass each.
  std::vector<int64_t> order(scales.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scales[a] < scales[b]; });
  std::vector<int64_t> sorted;
  for (int64_t i : order) sorted.push_back(scales[i]);
  std::vector<std::vector<int64_t>> groups;
  if (nested(sorted)) {
    groups.push_back(order);
  } else {
    for (int64_t i : order) groups.push_back({i});
  }
  BadLabel bad;
  for (const auto& group : groups) {
    std::vector<int64_t> group_scales;
    std::vector<float*> group_outs;
    for (int64_t i : group) {
      group_scales.push_back(scales[i]);
      group_outs.push_back(outs[i].data_ptr<float>());
    }
#define COVSEG_LABEL_CASE(enum_type)                                                             \
  AT_DISPATCH_CASE(enum_type, [&] {                                                              \
    const scalar_t* data = lab.const_data_ptr<scalar_t>();                                       \
    switch (group_scales.front()) {                                                              \
      case 1: pool_nested<scalar_t, 1>(data, group_outs, group_scales, B, H, W, num_classes, ignore_index, bad); break; \
      case 2: pool_nested<scalar_t, 2>(data, group_outs, group_scales, B, H, W, num_classes, ignore_index, bad); break; \
      case 4: pool_nested<scalar_t, 4>(data, group_outs, group_scales, B, H, W, num_classes, ignore_index, bad); break; \
      default: pool_nested<scalar_t, 0>(data, group_outs, group_scales, B, H, W, num_classes, ignore_index, bad); \
    }                                                                                            \
  })
    AT_DISPATCH_SWITCH(lab.scalar_type(), "class_prob_pool_cpu",
                       COVSEG_LABEL_CASE(at::kByte) COVSEG_LABEL_CASE(at::kInt) COVSEG_LABEL_CASE(at::kLong));
#undef COVSEG_LABEL_CASE
  }
  TORCH_CHECK_VALUE(!bad.seen.load(), "class_prob_pool: label value ", bad.value.load(), " is outside [0, ",
                    num_classes, ")", ignore_index ? " and is not ignore_index" : "");
  return outs;
}

}  // namespace covseg

TORCH_LIBRARY(covseg_ext, m) {
  m.def("class_prob_pool(Tensor labels, int num_classes, int[] scales, int? ignore_index) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(covseg_ext, CPU, m) { m.impl("class_prob_pool", &covseg::class_prob_pool_cpu); }
