// The CUDA kernels of glmtool's engine, templated on the storage type T (half or bfloat16).
// Every kernel accumulates in float32; results are rounded to T where the published PyTorch
// code materialises a half-precision tensor (test/reference/chatglm_ref.py, PRECISION).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace glm {

// ---- storage type helpers -------------------------------------------------------------------

template <typename T> struct TT;
template <> struct TT<half> {
  static __device__ __forceinline__ float f(half x) { return __half2float(x); }
  static __device__ __forceinline__ half t(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float2 f2(uint32_t u) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
  }
};
template <> struct TT<__nv_bfloat16> {
  static __device__ __forceinline__ float f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 t(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float2 f2(uint32_t u) {
    __nv_bfloat162 h;
    memcpy(&h, &u, 4);
    return __bfloat1622float2(h);
  }
};

// Round a float32 to T and back: where the reference holds a half-precision tensor.
template <typename T> __device__ __forceinline__ float rnd(float x) { return TT<T>::f(TT<T>::t(x)); }

// Weights are read once per step: bypass L1 (no reuse) and let the loads be scheduled freely
// (no `volatile`, unlike __ldcs), so several 16-byte loads are in flight per thread.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

template <typename T> __device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  float2 a = TT<T>::f2(w.x), b = TT<T>::f2(x.x);
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  a = TT<T>::f2(w.y), b = TT<T>::f2(x.y);
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  a = TT<T>::f2(w.z), b = TT<T>::f2(x.z);
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  a = TT<T>::f2(w.w), b = TT<T>::f2(x.w);
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  return acc;
}

// Programmatic dependent launch (Hopper): a kernel launched with the programmatic-serialization
// attribute may start while its predecessor finishes. pdl_trigger() lets the next kernel launch
// early; pdl_wait() blocks until the predecessor's writes are visible. Every kernel here waits
// before it reads anything an earlier kernel wrote and before it writes anything; only weights
// (never written during a step) are read before the wait. No-ops before sm_90 and for kernels
// launched without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum / max; every thread gets the result. `red` holds >= 33 floats.
__device__ __forceinline__ float blockSum(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? red[lane] : 0.f;
    t = warpSum(t);
    if (lane == 0) red[32] = t;
  }
  __syncthreads();
  return red[32];
}
__device__ __forceinline__ float blockMax(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warpMax(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? red[lane] : -INFINITY;
    t = warpMax(t);
    if (lane == 0) red[32] = t;
  }
  __syncthreads();
  return red[32];
}

__device__ __forceinline__ float gelu_tanh(float x) {
  // docs/chatglm.md section 3: 0.5*x*(1+tanh(0.7978845608028654*x*(1+0.044715*x*x)))
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * x * (1.f + 0.044715f * x * x)));
}
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// ---- per-step values read from device memory (so a captured decode graph is reusable) -------

struct StepMeta {
  int past;            // tokens already in the cache (prefix entries excluded)
  int S;               // new tokens this step
  int bidirectional;   // v1: leading tokens that see each other both ways
  int greedy;
  int topK;
  int vocabLimit;
  float temperature;
  float topP;
  float random;
  int step;            // decodeMany: the step running now (index into its plan)
  int pad[6];
};
static_assert(sizeof(StepMeta) == 64, "StepMeta is 64 bytes");
// After the StepMeta: int posblock[2 * S] (position, block position) per new token.
// decodeMany (S == 1, n steps without the host): posblock[0..1] the running step's, then its
// plan, each of MANY_MAX entries: int plan[2 * MANY_MAX] (position, block position of step i),
// float random[MANY_MAX], int tokens[MANY_MAX] (the token step i chose).
constexpr int MANY_MAX = 512;
__host__ __device__ __forceinline__ int* manyPlan(int* pb) { return pb + 2; }
__host__ __device__ __forceinline__ float* manyRandom(int* pb) { return reinterpret_cast<float*>(pb + 2 + 2 * MANY_MAX); }
__host__ __device__ __forceinline__ int* manyTokens(int* pb) { return pb + 2 + 3 * MANY_MAX; }

// ---- GEMV: y = W x (+ b) for one token, W [N, K] row-major ------------------------------------

enum Epi { EPI_NONE = 0, EPI_GELU = 1, EPI_SWIGLU = 2, EPI_F32 = 3 };

// Attention / cache geometry (also the rotary pairs of the fused QKV GEMV below).
struct Geom {
  int interleaved; // 1: QKV rows per head [q; k; v] (kvHeads == heads); 0: [q heads; k groups; v groups]
  int rotary2d;    // 1: two rotate_half halves per head (position, block position); 0: pairs on the first half
  int heads, kvHeads, D, nqkv;
  int prefix;      // prefix entries in front of the cache
  int maxTotal;    // cache rows per head (prefix + maxLength)
  __host__ __device__ __forceinline__ int qOff(int h) const { return interleaved ? h * 3 * D : h * D; }
  __host__ __device__ __forceinline__ int kOff(int g) const { return interleaved ? g * 3 * D + D : heads * D + g * D; }
  __host__ __device__ __forceinline__ int vOff(int g) const { return interleaved ? g * 3 * D + 2 * D : heads * D + kvHeads * D + g * D; }
};

// ---- residual + norm -------------------------------------------------------------------------

constexpr int NORM_PER_THREAD = 16;

// The norm statistics of one row spread over the block, NORM_PER_THREAD values per thread (v,
// zero past the row's end); `partial` is this thread's sum of v (LayerNorm) or v^2 (RMSNorm).
// LayerNorm: mean, then 1/std from the centred squares; RMSNorm: mean 0, 1/rms.
__device__ __forceinline__ void norm_stats(const float (&v)[NORM_PER_THREAD], float partial, bool rms, int H, float eps, float* red,
                                           float& mean, float& rstd) {
  const float sum = blockSum(partial, red);
  mean = 0.f;
  if (rms) {
    rstd = rsqrtf(sum / H + eps);
    return;
  }
  mean = sum / H;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < NORM_PER_THREAD; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < H) sq += (v[k] - mean) * (v[k] - mean);
  }
  sq = blockSum(sq, red);
  rstd = rsqrtf(sq / H + eps);
}

// One row, one block. v = the row's pre-norm value:
//   LN (v1, post-DeepNorm): v = a + alpha * res        (a == nullptr: v = res)
//   RMS (v2, pre-norm):     v = res + a, stored back into res (the residual stream)
// out = norm(v) * w (+ b); w == nullptr: out = v (ChatGLM2 without post_layer_norm).
template <typename T, bool RMS>
__device__ __forceinline__ void add_norm_row(const T* ar, T* __restrict__ rr, T* __restrict__ orow, const T* __restrict__ w,
                                             const T* __restrict__ b, float alpha, int H, float eps, float* red) {
  float v[NORM_PER_THREAD];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < NORM_PER_THREAD; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = 0.f;
    if (i < H) {
      float x = TT<T>::f(rr[i]);
      if (ar) {
        const T av = ar[i];
        if (RMS) {
          x = rnd<T>(x + TT<T>::f(av));
          rr[i] = TT<T>::t(x);
        } else {
          x = rnd<T>(rnd<T>(alpha * x) + TT<T>::f(av));
        }
      }
      v[k] = x;
      sum += RMS ? x * x : x;
    }
  }
  float mean, rstd;
  norm_stats(v, sum, RMS, H, eps, red, mean, rstd);
#pragma unroll
  for (int k = 0; k < NORM_PER_THREAD; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < H) {
      float y = v[k];
      if (w) {
        y = (y - mean) * rstd * TT<T>::f(w[i]);
        if (b) y += TT<T>::f(b[i]);
      }
      orow[i] = TT<T>::t(y);
    }
  }
}

// One block per row (see add_norm_row).
template <typename T, bool RMS>
__global__ void add_norm_kernel(const T* __restrict__ a, T* __restrict__ res, T* __restrict__ out, const T* __restrict__ w,
                                const T* __restrict__ b, float alpha, int H, float eps) {
  __shared__ float red[33];
  pdl_trigger();
  pdl_wait();
  const size_t row = blockIdx.x;
  add_norm_row<T, RMS>(a ? a + row * H : nullptr, res + row * H, out + row * H, w, b, alpha, H, eps, red);
}

// ---- GEMV, decode step (v2): rows per warp, U 16-byte loads per row issued together -----------

// Each warp computes RPW outputs; an output reads one weight row, two with EPI_SWIGLU (rows j and
// F + j) and EPI_ROPE (a rotary pair, rope_pair()). Per step of 32 * U vectors a lane loads the
// x vectors, issues the next step's weight loads (PF) and then does the FMAs on the current ones;
// tails are predicated, so any K that is a multiple of 8 works. The first step's weights are
// loaded before pdl_wait() (weights are never written during a step).
constexpr int EPI_ROPE = 4;
constexpr int GEMV2_THREADS = 256;

// EPI_ROPE, the decode step's QKV projection with the rotary embedding and the KV-cache write
// fused: output j of nqkv / 2 is a pair of rows of the fused QKV output that rotate together
// (2D rotary: d, d + D/4 within each half of a head; else 2p, 2p + 1); value rows pair the same way and
// are copied. q goes back into the QKV buffer (attention reads it there), k and v into the cache
// (RopeCtx Kc null, the INT8 cache: into the QKV buffer as well).
struct RopePair {
  int ia, ib;    // rows of the QKV output
  int type;      // 0 q, 1 k, 2 v
  int head;      // q head or KV group
  int d, delta;  // dim of ia within its head; ib = ia + delta
  int fi;        // frequency index, -1: passes through
  int useBlock;  // 2D rotary, second half of a head: rotated by the block position
};
__device__ __forceinline__ RopePair rope_pair(const Geom& g, int j) {
  const int D = g.D, half = D / 2, quarter = D / 4;
  const int blk = j / half, p = j % half;
  RopePair r;
  // which head's q, k or v the block of D rows is
  if (g.interleaved) {
    r.head = blk / 3, r.type = blk % 3;
  } else {
    if (blk < g.heads) r.type = 0, r.head = blk;
    else if (blk < g.heads + g.kvHeads) r.type = 1, r.head = blk - g.heads;
    else r.type = 2, r.head = blk - g.heads - g.kvHeads;
  }
  // which rows rotate together, by which frequency
  if (g.rotary2d) {
    const int h2 = p / quarter, i = p % quarter;
    r.d = h2 * half + i, r.delta = quarter;
    r.fi = r.type < 2 ? i : -1;
    r.useBlock = h2;
  } else {
    r.d = 2 * p, r.delta = 1;
    r.fi = r.type < 2 && p < quarter ? p : -1;
    r.useBlock = 0;
  }
  r.ia = blk * D + r.d;
  r.ib = r.ia + r.delta;
  return r;
}
struct RopeCtx {
  void* Kc;
  void* Vc;
  const StepMeta* meta;
  const float* invf;
  Geom g;
};

// The decode step's norms without norm kernels. EPI_RES (the attention output and MLP down
// projections): the epilogue adds the residual, v = res + y (v2) or alpha * res + y (v1), rounded
// as add_norm_row() rounds, and stores v (row j only touches element j, so v2 updates its
// residual stream in place). NORM (the GEMVs that read a norm's output: QKV, up): every block
// first normalises x = v into shared memory with add_norm_row()'s arithmetic (bit-identical to
// the norm kernel), block 0 also storing it to normOut (v1: the next residual).
constexpr int EPI_RES = 5;
struct NormCtx {
  const void* res;  // EPI_RES: the residual
  float alpha;      // EPI_RES: v1's DeepNorm alpha, 1 for v2
  int rms;          // 1: RMSNorm (v2), 0: LayerNorm (v1)
  const void* w;    // NORM: weight and bias (bias null for RMSNorm)
  const void* b;
  void* normOut;    // NORM: where block 0 stores the normalised row (may be null)
  float eps;
};
constexpr int NORM_FUSED_MAX = NORM_PER_THREAD * GEMV2_THREADS;  // the largest hidden size a NORM GEMV normalises

// v's norm into xs (shared), every thread of the block; block 0 also stores it to nc.normOut.
template <typename T>
__device__ __forceinline__ void norm_into_shared(const T* __restrict__ v, int H, const NormCtx& nc, T* xs, float* red) {
  float val[NORM_PER_THREAD];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < NORM_PER_THREAD; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    val[k] = i < H ? TT<T>::f(v[i]) : 0.f;
    sum += nc.rms ? val[k] * val[k] : val[k];
  }
  float mean, rstd;
  norm_stats(val, sum, nc.rms, H, nc.eps, red, mean, rstd);
  const T* w = static_cast<const T*>(nc.w);
  const T* b = static_cast<const T*>(nc.b);
  T* o = blockIdx.x == 0 ? static_cast<T*>(nc.normOut) : nullptr;
#pragma unroll
  for (int k = 0; k < NORM_PER_THREAD; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < H) {
      float y = (val[k] - mean) * rstd * TT<T>::f(w[i]);
      if (b) y += TT<T>::f(b[i]);
      xs[i] = TT<T>::t(y);
      if (o) o[i] = xs[i];
    }
  }
  __syncthreads();
}

// ---- weight-only quantized GEMV weights (glmtool quantize / the published int4 layout) ------

// How a GEMV's weight rows are stored: WQ_NONE as T (8 per 16-byte load), WQ_I8 int8 (16 per
// load), WQ_I4 two signed nibbles per byte, column 2j in the HIGH nibble (32 per load). The
// engine pads quantized rows to a multiple of 16 bytes with zeros (rowBytes); W ~ q * scale with
// one fp16 scale per row (groups == 1) or per row and group of columns (GROUPED).
enum WQ { WQ_NONE = 0, WQ_I4 = 4, WQ_I8 = 8 };
struct QuantCtx {
  const half* scale;  // [rows, groups]
  int groups;         // scales per row
  int groupUnits;     // GROUPED: 16-byte loads per group
  int rowBytes;       // bytes from one row to the next
};

// Integers to float without the quarter-rate I2F: the byte (made unsigned by the xor) becomes
// the mantissa of 2^23, and 2^23 plus the offset is subtracted; exact for |q| <= 2^22.
__device__ __forceinline__ float mant(uint32_t u, uint32_t sel) { return __int_as_float(__byte_perm(u, 0x4B000000u, sel)); }
// 4 signed bytes of w (byte 0 first)
__device__ __forceinline__ void int8x4(uint32_t w, float (&f)[4]) {
  const uint32_t u = w ^ 0x80808080u;
  f[0] = mant(u, 0x7540) - 8388736.f;
  f[1] = mant(u, 0x7541) - 8388736.f;
  f[2] = mant(u, 0x7542) - 8388736.f;
  f[3] = mant(u, 0x7543) - 8388736.f;
}
// 8 signed nibbles of w: byte k holds column 2k in its high nibble, 2k + 1 in its low one
__device__ __forceinline__ void int4x8(uint32_t w, float (&f)[8]) {
  const uint32_t u = w ^ 0x88888888u;
  const uint32_t lo = u & 0x0F0F0F0Fu, hi = (u >> 4) & 0x0F0F0F0Fu;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    f[2 * k] = mant(hi, 0x7540 + k) - 8388616.f;
    f[2 * k + 1] = mant(lo, 0x7540 + k) - 8388616.f;
  }
}
// x vector (8 values of T) as floats
template <typename T> __device__ __forceinline__ void xf8(const uint4& x, float* f) {
  float2 a = TT<T>::f2(x.x);
  f[0] = a.x, f[1] = a.y;
  a = TT<T>::f2(x.y);
  f[2] = a.x, f[3] = a.y;
  a = TT<T>::f2(x.z);
  f[4] = a.x, f[5] = a.y;
  a = TT<T>::f2(x.w);
  f[6] = a.x, f[7] = a.y;
}
// One 16-byte load of quantized weights against its 16 (int8) or 32 (int4) x values, as floats.
template <int WQ>
__device__ __forceinline__ float dotq(const uint4& w, const float* xf, float acc) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w};
  if (WQ == WQ_I8) {
#pragma unroll
    for (int v = 0; v < 4; v++) {
      float q[4];
      int8x4(wv[v], q);
#pragma unroll
      for (int k = 0; k < 4; k++) acc = fmaf(q[k], xf[4 * v + k], acc);
    }
  } else {
#pragma unroll
    for (int v = 0; v < 4; v++) {
      float q[8];
      int4x8(wv[v], q);
#pragma unroll
      for (int k = 0; k < 8; k++) acc = fmaf(q[k], xf[8 * v + k], acc);
    }
  }
  return acc;
}

// The FMAs of one step of U loads per row (gemv2_rows): T weights against the x vectors loaded
// for the step (xs); quantized weights load their XV x vectors per load here (x is in L1 / shared
// memory) and, grouped, scale each load's partial sum by its group's scale.
template <typename T, int WQ, bool GROUPED, bool NORM, int NR, int U>
__device__ __forceinline__ void gemv_step(float (&acc)[NR], const uint4 (&cur)[NR][U], const uint4 (&xs)[U], const uint4* xv,
                                          int base, int lane, int K8, const half* const (&srow)[NR], int groupUnits) {
  if (WQ == WQ_NONE) {
#pragma unroll
    for (int i = 0; i < NR; i++)
#pragma unroll
      for (int u = 0; u < U; u++) acc[i] = dot8<T>(cur[i][u], xs[u], acc[i]);
  } else {
    constexpr int XV = WQ == WQ_I8 ? 2 : 4;
    const uint4 z = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = base + lane + 32 * u;
      // the load's x values, converted once for all NR rows
      float xf[XV * 8];
#pragma unroll
      for (int v = 0; v < XV; v++) {
        const int xi = c * XV + v;
        xf8<T>(xi < K8 ? (NORM ? xv[xi] : __ldg(xv + xi)) : z, xf + 8 * v);
      }
#pragma unroll
      for (int i = 0; i < NR; i++) {
        if (GROUPED) {
          // a load past the row's end (the last step's tail) has no scale to read
          if (c * XV < K8) acc[i] = fmaf(__half2float(__ldg(srow[i] + c / groupUnits)), dotq<WQ>(cur[i][u], xf, 0.f), acc[i]);
        } else {
          acc[i] = dotq<WQ>(cur[i][u], xf, acc[i]);
        }
      }
    }
  }
}

// The store of one GEMV output (gemv2_rows, gemvmma_kernel): `a` the row's dot product (scale
// applied), `b` the second row's of a pair (EPI_SWIGLU: row + F; EPI_ROPE: the rotary partner);
// `row` the output index (EPI_ROPE: the pair's index j, rope_pair()).
template <typename T, int EPI>
__device__ __forceinline__ void gemv_store(float a, float b, int row, const T* __restrict__ bias, void* __restrict__ out, int F,
                                           const RopeCtx& rc, const NormCtx& nc) {
  if (EPI == EPI_ROPE) {
    const RopePair q = rope_pair(rc.g, row);
    float xa = a, xb = b;
    if (bias) xa += TT<T>::f(bias[q.ia]), xb += TT<T>::f(bias[q.ib]);
    xa = rnd<T>(xa), xb = rnd<T>(xb);
    float ya = xa, yb = xb;
    if (q.fi >= 0) {
      const int* posblock = reinterpret_cast<const int*>(rc.meta + 1);
      const float ang = (float)(q.useBlock ? posblock[1] : posblock[0]) * rc.invf[q.fi];
      const float c = cosf(ang), sn = sinf(ang);
      ya = xa * c - xb * sn;
      yb = xb * c + xa * sn;
    }
    T* dst;
    if (q.type == 0 || !rc.Kc) {  // no cache (the INT8 cache): k and v stay in the QKV buffer too
      dst = static_cast<T*>(out) + q.ia;
    } else {
      const size_t cacheRow = (size_t)rc.g.prefix + rc.meta->past;
      dst = static_cast<T*>(q.type == 1 ? rc.Kc : rc.Vc) + ((size_t)q.head * rc.g.maxTotal + cacheRow) * rc.g.D + q.d;
    }
    dst[0] = TT<T>::t(ya);
    dst[q.delta] = TT<T>::t(yb);
  } else if (EPI == EPI_F32) {
    if (bias) a += TT<T>::f(bias[row]);
    static_cast<float*>(out)[row] = a;
  } else if (EPI == EPI_SWIGLU) {
    if (bias) a += TT<T>::f(bias[row]), b += TT<T>::f(bias[row + F]);
    const float gl = rnd<T>(silu(rnd<T>(a)));
    static_cast<T*>(out)[row] = TT<T>::t(gl * rnd<T>(b));
  } else if (EPI == EPI_RES) {
    if (bias) a += TT<T>::f(bias[row]);
    a = rnd<T>(a);
    const float rv = TT<T>::f(static_cast<const T*>(nc.res)[row]);
    const float v = nc.rms ? rnd<T>(rv + a) : rnd<T>(rnd<T>(nc.alpha * rv) + a);
    static_cast<T*>(out)[row] = TT<T>::t(v);
  } else {
    if (bias) a += TT<T>::f(bias[row]);
    if (EPI == EPI_GELU) a = gelu_tanh(rnd<T>(a));
    static_cast<T*>(out)[row] = TT<T>::t(a);
  }
}

// Quantized weights (WQ, qc) share this structure and its epilogues: the loads are 16 bytes of
// int8 / packed int4 instead of T, dequantized in registers (gemv_step), accumulated in fp32, and
// the per-row scale applied to the sum before the epilogue (or per group, inside the loop).
template <typename T, int EPI, int RPW, int U, bool PF, bool NORM = false, int WQ = WQ_NONE, bool GROUPED = false>
__device__ __forceinline__ void gemv2_rows(const void* __restrict__ W, const T* __restrict__ x, const T* __restrict__ bias,
                                           void* __restrict__ out, int rows, int K, int F, const RopeCtx& rc,
                                           const NormCtx& nc = NormCtx{}, const QuantCtx& qc = QuantCtx{}) {
  constexpr int PR = (EPI == EPI_SWIGLU || EPI == EPI_ROPE) ? 2 : 1;
  constexpr int NR = RPW * PR;
  constexpr int XS = NORM ? NORM_FUSED_MAX : 1;
  __shared__ __align__(16) T xsh[XS];
  __shared__ float red[NORM ? 33 : 1];
  pdl_trigger();
  const int row0 = ((blockIdx.x * GEMV2_THREADS + threadIdx.x) >> 5) * RPW;
  const int lane = threadIdx.x & 31;
  if (!NORM && row0 >= rows) {
    pdl_wait();
    return;
  }
  const bool active = row0 < rows;  // NORM: every thread normalises first, idle warps then leave
  const int K8 = K >> 3;
  // 16-byte weight loads per row, and the bytes between rows
  const size_t rowBytes = WQ == WQ_NONE ? (size_t)K * sizeof(T) : (size_t)qc.rowBytes;
  const int KU = (int)(rowBytes >> 4);
  const char* Wb = static_cast<const char*>(W);
  const uint4* xv = reinterpret_cast<const uint4*>(NORM ? xsh : x);
  const uint4* wp[NR];
  const half* srow[NR];  // quantized: each weight row's scales
  int wrow[NR];
  int orow[RPW];
#pragma unroll
  for (int r = 0; r < RPW; r++) {
    const int rr = row0 + r < rows ? row0 + r : row0;  // past the end: recompute row0, not stored
    orow[r] = rr;
    if (EPI == EPI_ROPE) {
      const RopePair q = rope_pair(rc.g, rr);
      wrow[2 * r] = q.ia;
      wrow[2 * r + 1] = q.ib;
    } else if (EPI == EPI_SWIGLU) {
      wrow[2 * r] = rr;
      wrow[2 * r + 1] = rr + F;
    } else {
      wrow[r] = rr;
    }
  }
#pragma unroll
  for (int i = 0; i < NR; i++) {
    wp[i] = reinterpret_cast<const uint4*>(Wb + (size_t)wrow[i] * rowBytes);
    srow[i] = WQ == WQ_NONE ? nullptr : qc.scale + (size_t)wrow[i] * qc.groups;
  }
  float acc[NR];
  uint4 cur[NR][U];
  const uint4 z = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < NR; i++) {
    acc[i] = 0.f;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = lane + 32 * u;
      cur[i][u] = c < KU && active ? ld_stream(wp[i] + c) : z;
    }
  }
  pdl_wait();
  if (NORM) {
    norm_into_shared<T>(x, K, nc, xsh, red);
    if (!active) return;
  }
  for (int base = 0; base < KU; base += 32 * U) {
    uint4 xs[U];
    if (WQ == WQ_NONE) {
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int c = base + lane + 32 * u;
        xs[u] = c < K8 ? (NORM ? xv[c] : __ldg(xv + c)) : z;
      }
    }
    const int nb = base + 32 * U;
    if (PF) {
      uint4 nxt[NR][U];
#pragma unroll
      for (int i = 0; i < NR; i++)
#pragma unroll
        for (int u = 0; u < U; u++) {
          const int c = nb + lane + 32 * u;
          nxt[i][u] = c < KU ? ld_stream(wp[i] + c) : z;
        }
      gemv_step<T, WQ, GROUPED, NORM>(acc, cur, xs, xv, base, lane, K8, srow, qc.groupUnits);
#pragma unroll
      for (int i = 0; i < NR; i++)
#pragma unroll
        for (int u = 0; u < U; u++) cur[i][u] = nxt[i][u];
    } else {
      gemv_step<T, WQ, GROUPED, NORM>(acc, cur, xs, xv, base, lane, K8, srow, qc.groupUnits);
      if (nb < KU) {
#pragma unroll
        for (int i = 0; i < NR; i++)
#pragma unroll
          for (int u = 0; u < U; u++) {
            const int c = nb + lane + 32 * u;
            cur[i][u] = c < KU ? ld_stream(wp[i] + c) : z;
          }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NR; i++) acc[i] = warpSum(acc[i]);
  if (lane != 0) return;
  if (WQ != WQ_NONE && !GROUPED) {
#pragma unroll
    for (int i = 0; i < NR; i++) acc[i] *= __half2float(srow[i][0]);
  }
#pragma unroll
  for (int r = 0; r < RPW; r++) {
    if (row0 + r >= rows) break;
    gemv_store<T, EPI>(acc[PR * r], PR == 2 ? acc[PR * r + 1] : 0.f, orow[r], bias, out, F, rc, nc);
  }
}

template <typename T, int EPI, int RPW, int U, bool PF, bool NORM = false>
__global__ void __launch_bounds__(GEMV2_THREADS) gemv2_kernel(const T* __restrict__ W, const T* __restrict__ x,
                                                              const T* __restrict__ bias, void* __restrict__ out,
                                                              int rows, int K, int F, RopeCtx rc, NormCtx nc) {
  gemv2_rows<T, EPI, RPW, U, PF, NORM>(W, x, bias, out, rows, K, F, rc, nc);
}

// The quantized GEMV (gemv2_rows with int8 / int4 weights): same epilogues as gemv2_kernel.
template <typename T, int EPI, int RPW, int U, bool PF, bool NORM, int WQ, bool GROUPED>
__global__ void __launch_bounds__(GEMV2_THREADS) gemvq_kernel(const void* __restrict__ W, const T* __restrict__ x,
                                                              const T* __restrict__ bias, void* __restrict__ out,
                                                              int rows, int K, int F, RopeCtx rc, NormCtx nc, QuantCtx qc) {
  gemv2_rows<T, EPI, RPW, U, PF, NORM, WQ, GROUPED>(W, x, bias, out, rows, K, F, rc, nc, qc);
}

// Prefill with quantized weights: one weight dequantized into an fp16 / bf16 [rows, K] scratch
// buffer for the cuBLAS GEMM, each element T(q * scale) (the published extract kernels' rounding:
// the product is exact in float32, rounded once). 8 columns per thread.
template <typename T, int WQ>
__global__ void dequant_kernel(const uint8_t* __restrict__ W, QuantCtx qc, int groupSize, int rows, int K, T* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int K8 = K >> 3;
  const size_t total = (size_t)rows * K8;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / K8;
    const int k0 = (int)(i % K8) * 8;
    const uint8_t* row = W + r * qc.rowBytes;
    float q[8];
    if (WQ == WQ_I8) {
      const uint2 v = *reinterpret_cast<const uint2*>(row + k0);
      int8x4(v.x, *reinterpret_cast<float(*)[4]>(q));
      int8x4(v.y, *reinterpret_cast<float(*)[4]>(q + 4));
    } else {
      int4x8(*reinterpret_cast<const uint32_t*>(row + k0 / 2), q);
    }
    const float s = __half2float(qc.scale[r * qc.groups + (groupSize ? k0 / groupSize : 0)]);
    T o[8];
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = TT<T>::t(q[k] * s);
    *reinterpret_cast<uint4*>(out + r * K + k0) = *reinterpret_cast<const uint4*>(o);
  }
}

// ---- bias / activation after a cuBLAS GEMM (prefill) -----------------------------------------

// EPI_NONE: y += b; EPI_GELU: y = gelu(y + b) in place; EPI_SWIGLU: out[s, j] = silu(y[s, j]) * y[s, F + j].
template <typename T, int EPI>
__global__ void bias_act_kernel(T* __restrict__ y, const T* __restrict__ bias, T* __restrict__ out, int S, int N, int F) {
  pdl_trigger();
  pdl_wait();
  const size_t total = (size_t)S * (EPI == EPI_SWIGLU ? F : N);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    if (EPI == EPI_SWIGLU) {
      const size_t s = i / F, j = i % F;
      float g = TT<T>::f(y[s * 2 * F + j]), v = TT<T>::f(y[s * 2 * F + F + j]);
      if (bias) g = rnd<T>(g + TT<T>::f(bias[j])), v = rnd<T>(v + TT<T>::f(bias[F + j]));
      out[i] = TT<T>::t(rnd<T>(silu(g)) * v);
    } else {
      const size_t n = i % N;
      float v = TT<T>::f(y[i]);
      if (bias) v = rnd<T>(v + TT<T>::f(bias[n]));
      if (EPI == EPI_GELU) v = gelu_tanh(v);
      y[i] = TT<T>::t(v);
    }
  }
}

// ---- rotary embedding + KV cache write --------------------------------------------------------


// One block per new token. Rotates q in place and k into the cache row prefix + past + s; copies v.
// Kc and Vc null (the INT8 cache, kv_int8.cuh): k is rotated in place too and v stays.
// v1 (docs/chatglm.md 3): each half of a head (D/2 dims) is a rotate_half rotary of dim D/2, the first
// half by position, the second by block position; pairs (i, i + D/4) share frequency invf[i].
// v2 (docs/chatglm.md 4): the first D/2 dims, interleaved pairs (2j, 2j+1) with frequency invf[j];
// the other D/2 dims pass through.
template <typename T>
__global__ void rotary_cache_kernel(T* __restrict__ qkv, T* __restrict__ Kc, T* __restrict__ Vc,
                                    const StepMeta* __restrict__ meta, const float* __restrict__ invf, Geom g) {
  pdl_trigger();
  pdl_wait();
  const int s = blockIdx.x;
  const int* posblock = reinterpret_cast<const int*>(meta + 1);
  const int pos = posblock[2 * s], blk = posblock[2 * s + 1];
  const size_t cacheRow = (size_t)g.prefix + meta->past + s;
  T* r = qkv + (size_t)s * g.nqkv;
  const int D = g.D, quarter = D / 4;
  const int pairsPerHead = D / 2;  // v1: D/2 pairs; v2: D/4 rotated pairs + D/4 pass-through pairs
  const int items = (g.heads + g.kvHeads) * pairsPerHead;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int hh = it / pairsPerHead, p = it % pairsPerHead;
    const bool isQ = hh < g.heads;
    const int head = isQ ? hh : hh - g.heads;
    T* src = r + (isQ ? g.qOff(head) : g.kOff(head));
    T* dst = isQ || !Kc ? src : Kc + ((size_t)head * g.maxTotal + cacheRow) * D;
    int ia, ib;
    float c = 1.f, sn = 0.f;
    bool rotate = true;
    if (g.rotary2d) {
      const int half = p / quarter, i = p % quarter;
      ia = half * (D / 2) + i;
      ib = ia + quarter;
      const float ang = (float)(half ? blk : pos) * invf[i];
      c = cosf(ang), sn = sinf(ang);
    } else {
      ia = 2 * p;
      ib = 2 * p + 1;
      if (p < quarter) {
        const float ang = (float)pos * invf[p];
        c = cosf(ang), sn = sinf(ang);
      } else {
        rotate = false;
      }
    }
    const float xa = TT<T>::f(src[ia]), xb = TT<T>::f(src[ib]);
    if (rotate) {
      dst[ia] = TT<T>::t(xa * c - xb * sn);
      dst[ib] = TT<T>::t(xb * c + xa * sn);
    } else if (!isQ && Kc) {
      dst[ia] = src[ia];
      dst[ib] = src[ib];
    }
  }
  if (!Vc) return;
  for (int it = threadIdx.x; it < g.kvHeads * D; it += blockDim.x) {
    const int head = it / D, d = it % D;
    Vc[((size_t)head * g.maxTotal + cacheRow) * D + d] = r[g.vOff(head) + d];
  }
}

// ---- attention, one new token (decode), one block per query head and key split ----------------

// The split-KV attention per query head (GLMTOOL_CUDA_ATTN=head; the default is
// decode_attention.cuh): block (h, j) covers keys [j*chunk, (j+1)*chunk) of the T = prefix +
// past + 1 visible ones (a single new token sees every cached entry and itself), key loads of a
// row issued together; the last split of a head to finish (counter[h], reset by it) merges the
// head's splits. grid (heads, splits), 128 threads, D <= 128.
template <typename T>
__global__ void __launch_bounds__(128) attn_decode2_kernel(const T* __restrict__ qkv, const T* __restrict__ Kc,
                                                           const T* __restrict__ Vc, const StepMeta* __restrict__ meta,
                                                           Geom g, float scale, float* __restrict__ partO,
                                                           float* __restrict__ partML, unsigned* __restrict__ counter,
                                                           T* __restrict__ out) {
  __shared__ float qs[128];
  __shared__ float sc[128];
  __shared__ float red[33];
  __shared__ int amLast;
  pdl_trigger();
  pdl_wait();
  const int h = blockIdx.x, split = blockIdx.y, nsplit = gridDim.y;
  const int D = g.D;
  const int kvh = h / (g.heads / g.kvHeads);
  const int total = g.prefix + meta->past + 1;
  const int chunk = (total + nsplit - 1) / nsplit;
  const int t0 = split * chunk, t1 = min(total, t0 + chunk);
  const int tid = threadIdx.x;
  if (tid < D) qs[tid] = TT<T>::f(qkv[g.qOff(h) + tid]) * scale;
  __syncthreads();
  const T* Kh = Kc + (size_t)kvh * g.maxTotal * D;
  const T* Vh = Vc + (size_t)kvh * g.maxTotal * D;
  float m = -INFINITY, l = 0.f, acc = 0.f;
  for (int base = t0; base < t1; base += blockDim.x) {
    const int t = base + tid;
    float s = -INFINITY;
    if (t < t1) {
      const uint4* kr = reinterpret_cast<const uint4*>(Kh + (size_t)t * D);
      uint4 kv[16];
#pragma unroll
      for (int c = 0; c < 16; c++)
        if (c < D / 8) kv[c] = kr[c];
      float d0 = 0.f, d1 = 0.f;
#pragma unroll
      for (int c = 0; c < 16; c++) {
        if (c < D / 8) {
          float2 a = TT<T>::f2(kv[c].x), b = TT<T>::f2(kv[c].y);
          d0 = fmaf(a.x, qs[8 * c], d0);
          d1 = fmaf(a.y, qs[8 * c + 1], d1);
          d0 = fmaf(b.x, qs[8 * c + 2], d0);
          d1 = fmaf(b.y, qs[8 * c + 3], d1);
          a = TT<T>::f2(kv[c].z), b = TT<T>::f2(kv[c].w);
          d0 = fmaf(a.x, qs[8 * c + 4], d0);
          d1 = fmaf(a.y, qs[8 * c + 5], d1);
          d0 = fmaf(b.x, qs[8 * c + 6], d0);
          d1 = fmaf(b.y, qs[8 * c + 7], d1);
        }
      }
      s = d0 + d1;
    }
    const float mNew = fmaxf(m, blockMax(s, red));
    const float p = t < t1 ? expf(s - mNew) : 0.f;
    sc[tid] = p;
    const float tileSum = blockSum(p, red);  // its barriers also publish sc[]
    const float corr = expf(m - mNew);
    l = l * corr + tileSum;
    if (tid < D) {
      float a = acc * corr;
      const int n = min((int)blockDim.x, t1 - base);
      const T* vr = Vh + (size_t)base * D + tid;
#pragma unroll 8
      for (int j = 0; j < n; j++) a = fmaf(sc[j], TT<T>::f(vr[(size_t)j * D]), a);
      acc = a;
    }
    m = mNew;
    __syncthreads();
  }
  const size_t slot = (size_t)h * nsplit + split;
  if (tid < D) partO[slot * D + tid] = acc;
  if (tid == 0) {
    partML[2 * slot] = m;
    partML[2 * slot + 1] = l;
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) amLast = atomicAdd(&counter[h], 1u) == (unsigned)nsplit - 1;
  __syncthreads();
  if (!amLast) return;
  __threadfence();
  if (tid < D) {
    const float* po = partO + (size_t)h * nsplit * D;
    const float* pml = partML + (size_t)h * nsplit * 2;
    float M = -INFINITY;
    for (int j = 0; j < nsplit; j++) M = fmaxf(M, __ldcg(pml + 2 * j));
    float L = 0.f, o = 0.f;
    for (int j = 0; j < nsplit; j++) {
      const float w = expf(__ldcg(pml + 2 * j) - M);  // empty split: exp(-inf) = 0
      L += __ldcg(pml + 2 * j + 1) * w;
      o += __ldcg(po + (size_t)j * D + tid) * w;
    }
    out[(size_t)h * D + tid] = TT<T>::t(o / L);
  }
  if (tid == 0) counter[h] = 0;
}

// ---- attention, several new tokens (prefill): masked softmax between two cuBLAS GEMMs --------

// grid (rows, heads). Row r is query s0 + r at sequence index a = past + s0 + r; column t is a
// cache row (t < prefix: a prefix entry, visible to all; else sequence index u = t - prefix).
// Visible: u <= a, or both inside the first `bidirectional` tokens (v1's context).
template <typename T>
__global__ void softmax_mask_kernel(const float* __restrict__ scores, T* __restrict__ probs, int rows, int Tc, int s0,
                                    int past, int prefix, int bidirectional) {
  __shared__ float red[33];
  pdl_trigger();
  pdl_wait();
  const int r = blockIdx.x, h = blockIdx.y;
  const size_t off = ((size_t)h * rows + r) * Tc;
  const float* sr = scores + off;
  T* pr = probs + off;
  const int a = past + s0 + r;
  auto visible = [&](int t) {
    const int u = t - prefix;
    return t < prefix || u <= a || (a < bidirectional && u < bidirectional);
  };
  float m = -INFINITY;
  for (int t = threadIdx.x; t < Tc; t += blockDim.x)
    if (visible(t)) m = fmaxf(m, sr[t]);
  m = blockMax(m, red);
  float sum = 0.f;
  for (int t = threadIdx.x; t < Tc; t += blockDim.x)
    if (visible(t)) sum += expf(sr[t] - m);
  sum = blockSum(sum, red);
  const float inv = 1.f / sum;
  for (int t = threadIdx.x; t < Tc; t += blockDim.x) pr[t] = TT<T>::t(visible(t) ? expf(sr[t] - m) * inv : 0.f);
}

// ---- next-token choice on the GPU ------------------------------------------------------------

// One block of 1024 threads over one logits row. Mirrors src/runtime/sampling.ts: a row with NaN
// or Inf picks id 5 (the published InvalidScoreLogitsProcessor); greedy takes the first maximum;
// otherwise temperature, then top-k and top-p as thresholds on the logit found by bisection
// (the kept set is the same as sorting would give, ties at the threshold aside), then one draw
// of meta->random over the kept tokens in id order.
__global__ void __launch_bounds__(1024) sample_kernel(const float* __restrict__ logits, int V,
                                                      const StepMeta* __restrict__ meta, int* __restrict__ token) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[33];
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float scan[1024];
  const int tid = threadIdx.x, nt = blockDim.x;
  const int n = meta->vocabLimit > 0 && meta->vocabLimit < V ? meta->vocabLimit : V;
  float best = -INFINITY, lo = INFINITY;
  int bi = 0x7fffffff;
  float bad = 0.f;
  for (int i = tid; i < n; i += nt) {
    const float x = logits[i];
    if (!isfinite(x)) bad = 1.f;
    if (x > best) best = x, bi = i;  // i increases: the first maximum of this thread
    lo = fminf(lo, x);
  }
  // argmax across the block, lowest id among equal maxima
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
  }
  if ((tid & 31) == 0) sv[tid >> 5] = best, si[tid >> 5] = bi;
  __syncthreads();
  if (tid < 32) {
    best = tid < (nt >> 5) ? sv[tid] : -INFINITY;
    bi = tid < (nt >> 5) ? si[tid] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
    }
    if (tid == 0) sv[0] = best, si[0] = bi;
  }
  __syncthreads();
  const float mx = sv[0];
  const int amax = si[0];
  const bool invalid = blockSum(bad, red) > 0.f;
  lo = -blockMax(-lo, red);
  if (invalid) {
    if (tid == 0) *token = n > 5 ? 5 : 0;
    return;
  }
  if (meta->greedy || meta->temperature <= 0.f) {
    if (tid == 0) *token = amax;
    return;
  }
  const float invT = 1.f / meta->temperature;
  auto count = [&](float thr) {
    float c = 0.f;
    for (int i = tid; i < n; i += nt) c += logits[i] >= thr ? 1.f : 0.f;
    return blockSum(c, red);
  };
  auto mass = [&](float thr) {
    float c = 0.f;
    for (int i = tid; i < n; i += nt) {
      const float x = logits[i];
      if (x >= thr) c += expf((x - mx) * invT);
    }
    return blockSum(c, red);
  };
  float thr = lo;  // keep everything
  const int k = meta->topK;
  if (k > 0 && k < n && count(mx) < k) {
    float a = lo, b = mx;  // count(a) >= k > count(b)
    for (int it = 0; it < 48 && a < b; it++) {
      const float mid = 0.5f * (a + b);
      if (mid <= a || mid >= b) break;
      if (count(mid) >= k) a = mid; else b = mid;
    }
    thr = a;
  } else if (k > 0 && k < n) {
    thr = mx;
  }
  if (meta->topP < 1.f) {
    const float Z = mass(thr), want = meta->topP * Z;
    if (mass(mx) >= want) {
      thr = mx;
    } else {
      float a = thr, b = mx;  // mass(a) >= want > mass(b)
      for (int it = 0; it < 48 && a < b; it++) {
        const float mid = 0.5f * (a + b);
        if (mid <= a || mid >= b) break;
        if (mass(mid) >= want) a = mid; else b = mid;
      }
      thr = a;
    }
  }
  // one draw in id order: each thread sums a contiguous range, then a block scan
  const int per = (n + nt - 1) / nt;
  const int i0 = tid * per, i1 = min(n, i0 + per);
  float mine = 0.f;
  for (int i = i0; i < i1; i++) {
    const float x = logits[i];
    if (x >= thr) mine += expf((x - mx) * invT);
  }
  scan[tid] = mine;
  __syncthreads();
  for (int o = 1; o < nt; o <<= 1) {
    const float add = tid >= o ? scan[tid - o] : 0.f;
    __syncthreads();
    scan[tid] += add;
    __syncthreads();
  }
  const float totalMass = scan[nt - 1];
  const float target = meta->random * totalMass;
  const float before = scan[tid] - mine;
  if (tid == 0) *token = amax;  // fallback (rounding at the very end of the range)
  __syncthreads();
  if (mine > 0.f && target >= before && target < before + mine) {
    float run = before;
    int pick = -1;
    for (int i = i0; i < i1; i++) {
      const float x = logits[i];
      if (x >= thr) {
        pick = i;
        run += expf((x - mx) * invT);
        if (target < run) break;
      }
    }
    if (pick >= 0) *token = pick;
  }
}

// ---- decode steps without the host (decodeMany) -----------------------------------------------

// The step's input row: the embedding of the token the previous step chose (*token), gathered by
// the GPU from the host-resident table (pinned, mapped: read over PCIe, H * 2 bytes).
template <typename T>
__global__ void __launch_bounds__(256) embed_gather_kernel(const T* __restrict__ table, const int* __restrict__ token, int V,
                                                           T* __restrict__ x, int H) {
  int id = *token;
  id = id < 0 ? 0 : id >= V ? V - 1 : id;
  const uint4* src = reinterpret_cast<const uint4*>(table + (size_t)id * H);
  uint4* dst = reinterpret_cast<uint4*>(x);
  for (int i = threadIdx.x; i < (H >> 3); i += blockDim.x) dst[i] = src[i];
}

// After a step's sampling: record its token, move the step's values (past, positions, random) to
// the next step of the plan.
__global__ void decode_advance_kernel(StepMeta* __restrict__ meta, const int* __restrict__ token) {
  if (threadIdx.x != 0) return;
  int* pb = reinterpret_cast<int*>(meta + 1);
  const int s = meta->step;
  if (s >= 0 && s < MANY_MAX) manyTokens(pb)[s] = *token;
  const int n = s + 1;
  meta->step = n;
  meta->past += 1;
  if (n < MANY_MAX) {
    pb[0] = manyPlan(pb)[2 * n];
    pb[1] = manyPlan(pb)[2 * n + 1];
    meta->random = manyRandom(pb)[n];
  }
}

}  // namespace glm
