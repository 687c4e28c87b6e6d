// Prefill attention that never materialises the score matrix (issue 16): FlashAttention-2's
// scheme on mma.sync tensor cores. One block of 4 warps takes 64 * MT query rows of one head; each
// warp keeps its 16 * MT rows' running max / sum and output accumulator in registers and walks the
// visible keys in tiles of 64, double-buffered in shared memory with cp.async (the next tile loads
// while this one is multiplied). MT 1 keeps the warp's Q fragments in registers; MT 2 (two
// 16-row tiles a warp) reads them from shared memory at every key tile instead, to fit the second
// accumulator in registers, and uses every K and V fragment it loads twice: half the shared-memory
// reads per multiply, which bound MT 1 at long prompts. Scores, the softmax and P stay in registers: S = Q K^T
// (fp32 accumulate), online softmax in fp32 (exp2 with the scale folded in), P rounded to T for
// O += P V. Shared memory rows are padded by 16 bytes, so ldmatrix reads are conflict-free.
//
// The mask is the engine's (softmax_mask_kernel's): key t is visible to the query at position a
// (a = past + row) when t < prefix (merged P-Tuning rows), or u = t - prefix <= a (causal), or
// a < bidirectional && u < bidirectional (ChatGLM-6B's prompt). That is u <= lim(a) with
// lim(a) = a < bidirectional ? bidirectional - 1 : a, nondecreasing in a, so a block's keys end at
// lim of its last row and only the tiles past lim of its first row need the mask. Multi-query
// groups: query head h reads KV head h / heads-per-group. Written for this project (the published
// flash-attn is a PyTorch extension, not a library a Node addon can link); the layouts follow the
// PTX ISA's mma.m16n8k16 and ldmatrix fragment tables.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include "kernels.cuh"

namespace glm {

constexpr int FA_BC = 64;       // keys per tile
constexpr int FA_THREADS = 128;
// query rows per block: 4 warps of 16 * MT rows
template <int MT>
__host__ __device__ constexpr int flashRows() { return 64 * MT; }

template <typename T>
struct FlashArgs {
  const T* q;             // row s of head h at q + s * qStride + h * qHeadStride
  long long qStride;
  int qHeadStride;
  const T* k;             // key t of KV head g at k + g * kvHeadStride + t * D; values likewise
  const T* v;
  long long kvHeadStride;
  int headsPerGroup;
  T* out;                 // row s of head h at out + s * outStride + h * D
  long long outStride;
  int S, Tc, past, prefix, bidirectional;
  float scaleLog2;        // log2(e) / sqrt(D)
};

template <int D, int MT>
constexpr size_t flashSmemBytes() { return (size_t)(flashRows<MT>() + 4 * FA_BC) * (D + 8) * 2; }

namespace fa {

__device__ __forceinline__ void cp16(void* dst, const void* src, bool valid) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void* p) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const void* p) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

template <typename T> struct Mma;
template <> struct Mma<half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

__device__ __forceinline__ int limit(int a, int bidirectional) { return a < bidirectional ? bidirectional - 1 : a; }

}  // namespace fa

// grid (ceil(S / flashRows<MT>()), heads), FA_THREADS threads, flashSmemBytes<D, MT>() dynamic
// shared memory.
template <typename T, int D, int MT>
__global__ void __launch_bounds__(FA_THREADS) flash_prefill_kernel(const FlashArgs<T> a) {
  static_assert(D % 16 == 0 && D <= 128, "head size a multiple of 16, at most 128");
  static_assert(MT == 1 || MT == 2, "one or two 16-row tiles a warp");
  constexpr int BR = flashRows<MT>(), LD = D + 8, CH = D / 8;  // rows; row stride in elements; 16-byte chunks per row
  constexpr bool QREG = MT == 1;                                // Q fragments held in registers
  extern __shared__ __align__(16) unsigned char fa_smem[];
  T* sQ = reinterpret_cast<T*>(fa_smem);
  T* sK = sQ + BR * LD;   // [2][FA_BC][LD]
  T* sV = sK + 2 * FA_BC * LD;
  pdl_trigger();
  pdl_wait();
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows (most keys) start first
  const int h = blockIdx.y, g = h / a.headsPerGroup;
  const int q0 = qt * BR;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int lastRow = min(q0 + BR, a.S) - 1;
  const int limFirst = fa::limit(a.past + q0, a.bidirectional);
  const int kEnd = min(a.Tc, a.prefix + fa::limit(a.past + lastRow, a.bidirectional) + 1);
  const int tiles = (kEnd + FA_BC - 1) / FA_BC;
  const T* kg = a.k + g * a.kvHeadStride;
  const T* vg = a.v + g * a.kvHeadStride;

  // this thread's 16-byte chunks: rows tid / CH + i * (FA_THREADS / CH) (FA_THREADS % CH == 0)
  auto loadRows = [&](T* dst, const T* src, long long stride, int r0, int rows, int valid) {
    for (int i = tid; i < rows * CH; i += FA_THREADS) {
      const int r = i / CH, c = i % CH;
      const bool ok = r0 + r < valid;
      fa::cp16(dst + r * LD + c * 8, ok ? src + (long long)(r0 + r) * stride + c * 8 : src, ok);
    }
  };
  loadRows(sQ, a.q + h * a.qHeadStride, a.qStride, q0, BR, a.S);
  if (tiles > 0) {
    loadRows(sK, kg, D, 0, FA_BC, a.Tc);
    loadRows(sV, vg, D, 0, FA_BC, a.Tc);
  }
  fa::commit();

  uint32_t qf[QREG ? D / 16 : 1][4];
  float o[MT][D / 8][4];
  float m[MT][2], l[MT][2];
  int lim[MT][2];  // lim() of this thread's rows: tile t's rows rLo and rLo + 8
#pragma unroll
  for (int t = 0; t < MT; t++) {
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0.f;
    m[t][0] = m[t][1] = -INFINITY;
    l[t][0] = l[t][1] = 0.f;
    const int rLo = (warp * MT + t) * 16 + (lane >> 2);
    lim[t][0] = fa::limit(a.past + q0 + rLo, a.bidirectional);
    lim[t][1] = fa::limit(a.past + q0 + rLo + 8, a.bidirectional);
  }
  // tile t's Q fragment for columns kk * 16..+16 (ldmatrix x4: rows lane & 15, column half lane >> 4)
  auto qAddr = [&](int t, int kk) { return sQ + ((warp * MT + t) * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8; };

  for (int j = 0; j < tiles; j++) {
    const int buf = j & 1;
    if (j + 1 < tiles) {
      loadRows(sK + (buf ^ 1) * FA_BC * LD, kg, D, (j + 1) * FA_BC, FA_BC, a.Tc);
      loadRows(sV + (buf ^ 1) * FA_BC * LD, vg, D, (j + 1) * FA_BC, FA_BC, a.Tc);
      fa::commit();
      fa::wait<1>();
    } else {
      fa::wait<0>();
    }
    __syncthreads();
    if (QREG && j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) fa::ldsm4(qf[QREG ? kk : 0], qAddr(0, kk));
    }
    const T* k = sK + buf * FA_BC * LD;
    const T* v = sV + buf * FA_BC * LD;
    float s[MT][FA_BC / 8][4];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
      for (int i = 0; i < FA_BC / 8; i++) s[t][i][0] = s[t][i][1] = s[t][i][2] = s[t][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int t = 0; t < MT; t++) {
        if (QREG) {
#pragma unroll
          for (int i = 0; i < 4; i++) qa[t][i] = qf[QREG ? kk : 0][i];
        } else {
          fa::ldsm4(qa[t], qAddr(t, kk));
        }
      }
#pragma unroll
      for (int np = 0; np < FA_BC / 16; np++) {
        uint32_t b[4];
        fa::ldsm4(b, k + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int t = 0; t < MT; t++) {
          fa::Mma<T>::run(s[t][2 * np], qa[t], b[0], b[1]);
          fa::Mma<T>::run(s[t][2 * np + 1], qa[t], b[2], b[3]);
        }
      }
    }
    const int t0 = j * FA_BC;
    const bool masked = t0 + FA_BC > a.Tc || t0 + FA_BC - 1 - a.prefix > limFirst;
    float mx[MT][2];
#pragma unroll
    for (int t = 0; t < MT; t++) {
      mx[t][0] = m[t][0], mx[t][1] = m[t][1];
#pragma unroll
      for (int nt = 0; nt < FA_BC / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float x = s[t][nt][e] * a.scaleLog2;
          if (masked) {
            const int key = t0 + nt * 8 + 2 * (lane & 3) + (e & 1);
            const bool vis = key < a.Tc && (key < a.prefix || key - a.prefix <= lim[t][e >> 1]);
            if (!vis) x = -INFINITY;
          }
          s[t][nt][e] = x;
          mx[t][e >> 1] = fmaxf(mx[t][e >> 1], x);
        }
      }
      float corr[2];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        mx[t][r] = fmaxf(mx[t][r], __shfl_xor_sync(0xffffffffu, mx[t][r], 1));
        mx[t][r] = fmaxf(mx[t][r], __shfl_xor_sync(0xffffffffu, mx[t][r], 2));
        const float use = mx[t][r] == -INFINITY ? 0.f : mx[t][r];
        corr[r] = exp2f(m[t][r] - use);  // 0 while nothing was visible (m = -inf)
        m[t][r] = mx[t][r];
        mx[t][r] = use;
        l[t][r] *= corr[r];
      }
#pragma unroll
      for (int i = 0; i < D / 8; i++) {
        o[t][i][0] *= corr[0], o[t][i][1] *= corr[0];
        o[t][i][2] *= corr[1], o[t][i][3] *= corr[1];
      }
    }
#pragma unroll
    for (int kj = 0; kj < FA_BC / 16; kj++) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int t = 0; t < MT; t++) {
        float p[2][4];
#pragma unroll
        for (int half_ = 0; half_ < 2; half_++) {
#pragma unroll
          for (int e = 0; e < 4; e++) {
            p[half_][e] = exp2f(s[t][2 * kj + half_][e] - mx[t][e >> 1]);
            l[t][e >> 1] += p[half_][e];
          }
        }
        pa[t][0] = fa::Mma<T>::pack(p[0][0], p[0][1]), pa[t][1] = fa::Mma<T>::pack(p[0][2], p[0][3]);
        pa[t][2] = fa::Mma<T>::pack(p[1][0], p[1][1]), pa[t][3] = fa::Mma<T>::pack(p[1][2], p[1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        uint32_t b[4];
        fa::ldsm4t(b, v + (kj * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dp * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int t = 0; t < MT; t++) {
          fa::Mma<T>::run(o[t][2 * dp], pa[t], b[0], b[1]);
          fa::Mma<T>::run(o[t][2 * dp + 1], pa[t], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next iteration refills it
  }

#pragma unroll
  for (int t = 0; t < MT; t++) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      l[t][r] += __shfl_xor_sync(0xffffffffu, l[t][r], 1);
      l[t][r] += __shfl_xor_sync(0xffffffffu, l[t][r], 2);
    }
    const float inv[2] = {l[t][0] > 0.f ? 1.f / l[t][0] : 0.f, l[t][1] > 0.f ? 1.f / l[t][1] : 0.f};
    const int rLo = (warp * MT + t) * 16 + (lane >> 2);
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int row = q0 + rLo + 8 * r;
      if (row >= a.S) continue;
      T* dst = a.out + row * a.outStride + h * D + 2 * (lane & 3);
#pragma unroll
      for (int i = 0; i < D / 8; i++) {
        const uint32_t w = fa::Mma<T>::pack(o[t][i][2 * r] * inv[r], o[t][i][2 * r + 1] * inv[r]);
        *reinterpret_cast<uint32_t*>(dst + i * 8) = w;
      }
    }
  }
}

}  // namespace glm
