// covseg_ext::class_prob_pool — CPP pooling on the CPU, and the schema of the
// private op that the Python custom op covseg::class_prob_pool calls.
//
// out_s[b,k,i,j] = count_{(u,v) in window (i,j)}(labels[b,u,v] == k) / s²
// Layout: labels (B,H,W) contiguous; each output (B,K,H/s,W/s) contiguous fp32.
// Parallel over (b, output row) of each scale; each task reads its s input rows
// once and accumulates integer counts, so results are exact (counts/s² in fp32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

namespace covseg {

namespace {

template <typename label_t>
void pool_one_scale(const label_t* labels, float* out, int64_t B, int64_t H, int64_t W, int64_t K,
                    int64_t s, int64_t ignore, bool has_ignore, std::atomic<int64_t>& bad_value,
                    std::atomic<bool>& bad) {
  const int64_t Ho = H / s, Wo = W / s;
  const float area = static_cast<float>(s * s);  // divide (not multiply by 1/s²) to round as avg_pool2d does
  at::parallel_for(0, B * Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> counts(K * Wo);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Ho, i = task % Ho;
      std::fill(counts.begin(), counts.end(), 0);
      for (int64_t u = i * s; u < (i + 1) * s; ++u) {
        const label_t* row = labels + (b * H + u) * W;
        for (int64_t v = 0; v < Wo * s; ++v) {
          const int64_t k = static_cast<int64_t>(row[v]);
          if (k >= 0 && k < K) {
            counts[k * Wo + v / s] += 1;
          } else if (!(has_ignore && k == ignore)) {
            bad_value.store(k);
            bad.store(true);
          }
        }
      }
      float* dst = out + b * K * Ho * Wo + i * Wo;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < Wo; ++j) dst[k * Ho * Wo + j] = counts[k * Wo + j] / area;
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
  std::atomic<bool> bad{false};
  std::atomic<int64_t> bad_value{0};
  for (int64_t s : scales) {
    TORCH_CHECK_VALUE(s >= 1 && s <= H && s <= W, "class_prob_pool: scale ", s, " does not fit the label map ", H,
                      "x", W);
    at::Tensor out = at::empty({B, num_classes, H / s, W / s}, lab.options().dtype(at::kFloat));
#define COVSEG_LABEL_CASE(enum_type)                                                                      \
  AT_DISPATCH_CASE(enum_type, [&] {                                                                       \
    pool_one_scale<scalar_t>(lab.const_data_ptr<scalar_t>(), out.data_ptr<float>(), B, H, W, num_classes, s, \
                             ignore_index.value_or(0), ignore_index.has_value(), bad_value, bad);          \
  })
    AT_DISPATCH_SWITCH(lab.scalar_type(), "class_prob_pool_cpu",
                       COVSEG_LABEL_CASE(at::kByte) COVSEG_LABEL_CASE(at::kInt) COVSEG_LABEL_CASE(at::kLong));
#undef COVSEG_LABEL_CASE
    TORCH_CHECK_VALUE(!bad.load(), "class_prob_pool: label value ", bad_value.load(), " is outside [0, ",
                      num_classes, ")", ignore_index ? " and is not ignore_index" : "");
    outs.push_back(out);
  }
  return outs;
}

}  // namespace covseg

TORCH_LIBRARY(covseg_ext, m) {
  m.def("class_prob_pool(Tensor labels, int num_classes, int[] scales, int? ignore_index) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(covseg_ext, CPU, m) { m.impl("class_prob_pool", &covseg::class_prob_pool_cpu); }
