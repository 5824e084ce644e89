// covseg_ext::class_prob_pool on CUDA: every scale in one launch, labels read once.
//
// out_s[b,k,i,j] = count_{(u,v) in s×s window (i,j)}(labels[b,u,v] == k) / s²
//
// Grid mapping: one block per (b, T×T tile) where T = max(scales) (all scales must
// divide T, checked on the host; otherwise one launch per scale with T = s).
// The block loads its T×T labels into shared memory as int16 class ids
// (-1 = ignored or outside the map, so partial tiles at the right/bottom edge
// floor like avg_pool2d), then for each scale s the threads stride over the
// (T/s)²·K output cells, each counting its s×s window in shared memory.
// Invalid labels never index anything: they set a device flag the host reads.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace covseg {
namespace {

// Limits, mirrored by the Python accepts() check (ops/class_prob_pool.py) so calls
// beyond them fall back to the reference instead of raising here.
constexpr int kMaxScales = 8;
constexpr int kMaxTile = 64;  // T ≤ 64 → 8 KB of int16 labels in shared memory
constexpr int kMaxScale = 2 * kMaxTile;  // a scale above kMaxTile gets its own tile of s×s
constexpr int64_t kMaxClasses = 32767;  // class ids are int16 in shared memory
constexpr int64_t kMaxBatch = 65535;    // the batch is gridDim.y

struct ScaleArgs {
  int count;
  int scale[kMaxScales];
  float* out[kMaxScales];
};

// The scales are indexed at run time (args.scale[si], args.out[si]): a by-value struct parameter would be
// copied to a 104-byte local-memory stack frame for that; __grid_constant__ (sm_70+, CUDA 11.7+) lets the
// kernel index it in the constant parameter space. tests/test_cuda_sources_compile.py checks the frame is 0.
template <typename label_t>
__global__ void class_prob_pool_kernel(const label_t* __restrict__ labels, const __grid_constant__ ScaleArgs args,
                                       int H, int W, int K, int T, long long ignore, bool has_ignore,
                                       int* __restrict__ bad_flag, long long* __restrict__ bad_value) {
  extern __shared__ short tile[];
  const int tiles_w = (W + T - 1) / T;
  const int b = blockIdx.y;
  const int ty = blockIdx.x / tiles_w, tx = blockIdx.x % tiles_w;
  const int y0 = ty * T, x0 = tx * T;
  for (int p = threadIdx.x; p < T * T; p += blockDim.x) {
    const int y = y0 + p / T, x = x0 + p % T;
    short cls = -1;
    if (y < H && x < W) {
      const long long k = static_cast<long long>(labels[(static_cast<long long>(b) * H + y) * W + x]);
      // ignore_index first: it counts for no class even when it lies in [0, K).
      if (has_ignore && k == ignore) {
        cls = -1;
      } else if (k >= 0 && k < K) {
        cls = static_cast<short>(k);
      } else {
        *bad_value = k;  // any offending value will do for the message
        atomicExch(bad_flag, 1);
      }
    }
    tile[p] = cls;
  }
  __syncthreads();
  for (int si = 0; si < args.count; ++si) {
    const int s = args.scale[si];
    const int Ho = H / s, Wo = W / s, n = T / s;
    const float area = static_cast<float>(s * s);  // divide (not multiply by 1/s²) to round as avg_pool2d does
    for (int c = threadIdx.x; c < n * n * K; c += blockDim.x) {
      const int k = c / (n * n), cell = c % (n * n);
      const int ci = cell / n, cj = cell % n;
      const int oi = ty * n + ci, oj = tx * n + cj;
      if (oi >= Ho || oj >= Wo) continue;  // window not fully inside the map
      int count = 0;
      for (int u = 0; u < s; ++u) {
        const short* row = tile + (ci * s + u) * T + cj * s;
        for (int v = 0; v < s; ++v) count += (row[v] == k);
      }
      args.out[si][((static_cast<long long>(b) * K + k) * Ho + oi) * Wo + oj] = __fdiv_rn(static_cast<float>(count), area);  // exact rounding even under --use_fast_math
    }
  }
}

void launch(const at::Tensor& lab, const std::vector<int64_t>& scales, std::vector<at::Tensor>& outs,
            const std::vector<int>& which, int T, int64_t K, std::optional<int64_t> ignore, at::Tensor& flag,
            at::Tensor& value) {
  const int B = lab.size(0), H = lab.size(1), W = lab.size(2);
  ScaleArgs args{};
  args.count = static_cast<int>(which.size());
  for (size_t i = 0; i < which.size(); ++i) {
    args.scale[i] = static_cast<int>(scales[which[i]]);
    args.out[i] = outs[which[i]].data_ptr<float>();
  }
  const dim3 grid(((H + T - 1) / T) * ((W + T - 1) / T), B);
  const int threads = std::min(256, std::max(32, T * T));
  const size_t smem = sizeof(short) * T * T;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#define COVSEG_LABEL_CASE(enum_type)                                                                      \
  AT_DISPATCH_CASE(enum_type, [&] {                                                                       \
    class_prob_pool_kernel<scalar_t><<<grid, threads, smem, stream>>>(                                   \
        lab.const_data_ptr<scalar_t>(), args, H, W, static_cast<int>(K), T, ignore.value_or(0),           \
        ignore.has_value(), flag.data_ptr<int>(), reinterpret_cast<long long*>(value.data_ptr<int64_t>())); \
  })
  AT_DISPATCH_SWITCH(lab.scalar_type(), "class_prob_pool_cuda",
                     COVSEG_LABEL_CASE(at::kByte) COVSEG_LABEL_CASE(at::kInt) COVSEG_LABEL_CASE(at::kLong));
#undef COVSEG_LABEL_CASE
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::vector<at::Tensor> class_prob_pool_cuda(const at::Tensor& labels, int64_t num_classes, at::IntArrayRef scales,
                                             std::optional<int64_t> ignore_index) {
  TORCH_CHECK_VALUE(labels.dim() == 3, "class_prob_pool: labels must be (B, H, W)");
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= kMaxClasses, "class_prob_pool: num_classes must be in [1, ",
                    kMaxClasses, "] on CUDA");
  TORCH_CHECK_VALUE(static_cast<int64_t>(scales.size()) <= kMaxScales, "class_prob_pool: at most ", kMaxScales,
                    " scales per call on CUDA");
  const c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor lab = labels.contiguous();
  const int64_t B = lab.size(0), H = lab.size(1), W = lab.size(2);
  TORCH_CHECK_VALUE(B <= kMaxBatch, "class_prob_pool: batch ", B, " > ", kMaxBatch, " is not supported on CUDA");
  std::vector<int64_t> sc(scales.begin(), scales.end());
  std::vector<at::Tensor> outs;
  for (int64_t s : sc) {
    TORCH_CHECK_VALUE(s >= 1 && s <= H && s <= W, "class_prob_pool: scale ", s, " does not fit the label map ", H,
                      "x", W);
    outs.push_back(at::empty({B, num_classes, H / s, W / s}, lab.options().dtype(at::kFloat)));
  }
  at::Tensor flag = at::zeros({1}, lab.options().dtype(at::kInt));
  at::Tensor value = at::zeros({1}, lab.options().dtype(at::kLong));
  if (B > 0 && H > 0 && W > 0) {
    const int64_t T = *std::max_element(sc.begin(), sc.end());
    const bool nested = T <= kMaxTile && std::all_of(sc.begin(), sc.end(), [&](int64_t s) { return T % s == 0; });
    if (nested) {
      std::vector<int> all(sc.size());
      for (size_t i = 0; i < sc.size(); ++i) all[i] = static_cast<int>(i);
      launch(lab, sc, outs, all, static_cast<int>(T), num_classes, ignore_index, flag, value);
    } else {
      // Scales that do not nest (or exceed the tile): one launch per scale, tiles of a multiple of s.
      for (size_t i = 0; i < sc.size(); ++i) {
        const int64_t tile = sc[i] <= kMaxTile ? sc[i] * (kMaxTile / sc[i]) : sc[i];
        TORCH_CHECK_VALUE(tile <= kMaxScale, "class_prob_pool: scale ", sc[i], " > ", kMaxScale,
                          " is not supported on CUDA");
        launch(lab, sc, outs, {static_cast<int>(i)}, static_cast<int>(tile), num_classes, ignore_index, flag, value);
      }
    }
    // One device→host read: the price of a clear error instead of silent garbage.
    TORCH_CHECK_VALUE(flag.item<int>() == 0, "class_prob_pool: label value ", value.item<int64_t>(),
                      " is outside [0, ", num_classes, ")", ignore_index ? " and is not ignore_index" : "");
  }
  return outs;
}

}  // namespace covseg

TORCH_LIBRARY_IMPL(covseg_ext, CUDA, m) { m.impl("class_prob_pool", &covseg::class_prob_pool_cuda); }
