// Decode-kernel micro-benchmark (issue 6): times each kernel class of the decode step in
// isolation at full ChatGLM-6B / ChatGLM2-6B sizes, and checks each fused kernel against the
// unfused kernels it replaces on random data (the GEMV shapes, rotary + KV write, the attention
// per block of heads against per head, the norms fused into the GEMVs). Not part of the addon:
//   nvcc -std=c++17 -O3 -arch=sm_90 -o build/native/stepbench native/stepbench.cu
//   build/native/stepbench            (one GPU; ~30 s)
// Timing: a CUDA graph of `reps` back-to-back launches (no PDL), rotating over enough weight
// copies to exceed L2, replayed 5 times; median replay / reps. Includes the launch gaps.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <functional>
#include <cmath>
#include "decode_attention.cuh"
#include "kernels.cuh"
#include "gemv_mma.cuh"
#include "flash_attention.cuh"
using namespace glm;

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

__global__ void fill_kernel(half* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    p[i] = __float2half((((h & 0xffffff) / 16777216.f) - 0.5f) * 2.f * scale);
  }
}
static void fill(void* p, size_t n, uint32_t seed, float scale) {
  fill_kernel<<<1024, 256>>>((half*)p, n, seed, scale);
  CK(cudaGetLastError());
}
static void* dalloc(size_t bytes) { void* p; CK(cudaMalloc(&p, bytes)); return p; }

static cudaStream_t st;
static int kvFails = 0;  // INT8 KV cache checks that failed
static int flashFails = 0;  // flash prefill attention checks that failed
// time fn(i) for i in [0, reps) captured in a graph; returns microseconds per call
static double timeGraph(int reps, const std::function<void(int)>& fn) {
  for (int i = 0; i < reps; i++) fn(i);  // warm
  CK(cudaStreamSynchronize(st));
  cudaGraph_t g; cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < reps; i++) fn(i);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  std::vector<float> ts;
  CK(cudaGraphLaunch(ge, st));
  for (int k = 0; k < 5; k++) {
    cudaEventRecord(a, st); CK(cudaGraphLaunch(ge, st)); cudaEventRecord(b, st);
    CK(cudaEventSynchronize(b));
    float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
  return ts[2] * 1000.0 / reps;
}

static float maxRel(const std::vector<float>& a, const std::vector<float>& b) {
  double md = 0, mb = 0;
  for (size_t i = 0; i < a.size(); i++) { md = std::max(md, (double)std::fabs(a[i] - b[i])); mb = std::max(mb, (double)std::fabs(b[i])); if (!std::isfinite(a[i])) return INFINITY; }
  return (float)(md / (mb > 0 ? mb : 1));
}
static std::vector<float> toHost(const void* p, size_t n, bool isF32) {
  std::vector<float> r(n);
  if (isF32) { CK(cudaMemcpy(r.data(), p, n * 4, cudaMemcpyDeviceToHost)); return r; }
  std::vector<half> h(n); CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; i++) r[i] = __half2float(h[i]);
  return r;
}

template <int EPI, int RPW, int U, bool PF>
static void launch2(const half* W, const half* x, const half* b, void* out, int rows, int K, int F, RopeCtx rc) {
  const int warps = (rows + RPW - 1) / RPW;
  const int blocks = (warps + 7) / 8;
  gemv2_kernel<half, EPI, RPW, U, PF><<<blocks, GEMV2_THREADS, 0, st>>>(W, x, b, out, rows, K, F, rc, NormCtx{});
}
template <int EPI>
static void launchCfg(int cfg, const half* W, const half* x, const half* b, void* out, int rows, int K, int F, RopeCtx rc) {
  constexpr bool pair = EPI == EPI_SWIGLU || EPI == EPI_ROPE;
  if (cfg == 0) launch2<EPI, 1, pair ? 4 : 8, true>(W, x, b, out, rows, K, F, rc);
  else if (cfg == 1) launch2<EPI, 2, pair ? 2 : 4, true>(W, x, b, out, rows, K, F, rc);
  else launch2<EPI, 1, pair ? 8 : 16, false>(W, x, b, out, rows, K, F, rc);
}

// Quantized GEMVs (issue 12): the tensor-core kernel over the tiled layout (gemv_mma.cuh) against
// gemvq_kernel over the row-major one, same random int8 / int4 weights and scales, per channel and
// grouped, EPI_NONE and EPI_SWIGLU; then the prefill dequantisation of both layouts, bit for bit.
// Weights rotate over copies past L2; GB/s counts the quantized bytes (and scales) read.
template <int WQ, bool GROUPED>
static void quantCase(const char* name, int epi, int N, int K, int gs, uint8_t* pool, size_t poolBytes, const half* x, const half* bias,
                      void* outA, void* outB, int& fails) {
  const int srcRow = WQ == WQ_I8 ? K : K / 2, rb = (srcRow + 15) / 16 * 16;
  const size_t bytes = (size_t)N * rb;
  const int copies = std::max<int>(1, (int)std::min<size_t>(poolBytes / 2 / bytes, 12));
  uint8_t* orig = pool;
  uint8_t* tiled = pool + poolBytes / 2;
  const int groups = gs ? K / gs : 1;
  half* scale = (half*)dalloc((size_t)N * groups * 2);
  fill(scale, (size_t)N * groups, 77 + N, 0.02f);
  for (int c = 0; c < copies; c++) {
    uint8_t* o = orig + (size_t)c * bytes;
    fill(o, bytes / 2, 1000 + c, 1.f);  // random bits
    if (rb != srcRow) CK(cudaMemset2D(o + srcRow, rb, 0, rb - srcRow, N));  // the engine's zero padding
    qtile_repack_kernel<WQ><<<4096, 256, 0, st>>>(o, rb, N, K, tiled + (size_t)c * bytes);
    CK(cudaGetLastError());
  }
  QuantCtx qc{scale, groups, gs ? gs / (WQ == WQ_I8 ? 16 : 32) : 0, rb};
  const int rows = epi == EPI_SWIGLU ? N / 2 : N, F = N / 2;
  RopeCtx rc{};
  auto runOld = [&](int i) {
    const uint8_t* W = orig + (size_t)(i % copies) * bytes;
    const int blocks = (rows + 7) / 8;
    if (epi == EPI_SWIGLU)
      gemvq_kernel<half, EPI_SWIGLU, 1, WQ == WQ_I8 ? 4 : 2, true, false, WQ, GROUPED><<<blocks, GEMV2_THREADS, 0, st>>>(W, x, bias, outA, rows, K, F, rc, NormCtx{}, qc);
    else
      gemvq_kernel<half, EPI_NONE, 1, WQ == WQ_I8 ? 8 : 4, true, false, WQ, GROUPED><<<blocks, GEMV2_THREADS, 0, st>>>(W, x, bias, outA, rows, K, F, rc, NormCtx{}, qc);
  };
  auto runNew = [&](int i) {
    const uint8_t* W = tiled + (size_t)(i % copies) * bytes;
    if (epi == EPI_SWIGLU)
      gemvmma_kernel<half, EPI_SWIGLU, 2, 4, false, WQ, GROUPED><<<(F + 15) / 16, QMMA_THREADS, 0, st>>>(W, x, bias, outB, rows, K, F, rc, NormCtx{}, qc);
    else
      gemvmma_kernel<half, EPI_NONE, 1, 4, false, WQ, GROUPED><<<(rows + 15) / 16, QMMA_THREADS, 0, st>>>(W, x, bias, outB, rows, K, F, rc, NormCtx{}, qc);
  };
  const int reps = std::max(4, std::min(40, copies * 4));
  const double tOld = timeGraph(reps, runOld), tNew = timeGraph(reps, runNew);
  CK(cudaStreamSynchronize(st));
  runOld(0); runNew(0);
  CK(cudaStreamSynchronize(st));
  const float err = maxRel(toHost(outB, rows, false), toHost(outA, rows, false));
  // prefill dequantisation of every row: row-major vs tiled, bit for bit, and their times
  const int dr = N;
  half* d1 = (half*)dalloc((size_t)dr * K * 2);
  half* d2 = (half*)dalloc((size_t)dr * K * 2);
  const dim3 dqGrid = dq_grid<WQ>(dr, K);
  const double tdRow = timeGraph(4, [&](int) { dequant_kernel<half, WQ><<<132 * 16, 256, 0, st>>>(orig, qc, gs, dr, K, d1); });
  const double tdTiled = timeGraph(4, [&](int) { dequant_tiled_kernel<half, WQ><<<dqGrid, 256, 0, st>>>(tiled, qc, gs, K, d2); });
  CK(cudaStreamSynchronize(st));
  std::vector<uint16_t> h1((size_t)dr * K), h2((size_t)dr * K);
  CK(cudaMemcpy(h1.data(), d1, h1.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(h2.data(), d2, h2.size() * 2, cudaMemcpyDeviceToHost));
  size_t diff = 0;
  for (size_t i = 0; i < h1.size(); i++) diff += h1[i] != h2[i];
  const double qb = (double)N * srcRow + (double)N * groups * 2;
  const bool ok = err < 2e-3 && diff == 0;
  fails += !ok;
  const double dqBytes = qb + (double)dr * K * 2;  // read + written
  printf("%-28s int%d g%-3d old %7.1f us %5.0f GB/s  mma %7.1f us %5.0f GB/s  %.2fx  maxrel %.1e  dequant diff %zu  %s\n", name,
         WQ == WQ_I8 ? 8 : 4, gs, tOld, qb / tOld / 1e3, tNew, qb / tNew / 1e3, tOld / tNew, err, diff, ok ? "ok" : "FAIL");
  printf("%-28s int%d g%-3d prefill dequant: row-major %7.1f us %5.0f GB/s, tiled %7.1f us %5.0f GB/s (read + written)\n", name,
         WQ == WQ_I8 ? 8 : 4, gs, tdRow, dqBytes / tdRow / 1e3, tdTiled, dqBytes / tdTiled / 1e3);
  cudaFree(scale); cudaFree(d1); cudaFree(d2);
}
static int quantSection(uint8_t* pool, size_t poolBytes, const half* x, const half* bias, void* outA, void* outB) {
  struct QS { const char* name; int epi; int N; int K; };
  const QS qs[] = {{"v1 qkv 12288x4096", EPI_NONE, 12288, 4096}, {"v1 down 4096x16384", EPI_NONE, 4096, 16384},
                   {"v2 qkv 4608x4096", EPI_NONE, 4608, 4096},   {"v2 up+swiglu 27392x4096", EPI_SWIGLU, 27392, 4096},
                   {"v2 down 4096x13696", EPI_NONE, 4096, 13696}, {"small v2 down 512x1712", EPI_NONE, 512, 1712},
                   {"small v2 up 3424x512", EPI_SWIGLU, 3424, 512}, {"tiny v2 down 64x160", EPI_NONE, 64, 160},
                   {"tiny v2 up 320x64", EPI_SWIGLU, 320, 64}};
  int fails = 0;
  printf("\nquantized GEMV: gemvq_kernel (row-major) vs gemvmma_kernel (tiles, mma.sync)\n");
  for (const QS& q : qs) {
    quantCase<WQ_I4, false>(q.name, q.epi, q.N, q.K, 0, pool, poolBytes, x, bias, outA, outB, fails);
    quantCase<WQ_I8, false>(q.name, q.epi, q.N, q.K, 0, pool, poolBytes, x, bias, outA, outB, fails);
    for (int gs : {32, 128}) {
      if (q.K % gs) continue;
      quantCase<WQ_I4, true>(q.name, q.epi, q.N, q.K, gs, pool, poolBytes, x, bias, outA, outB, fails);
      quantCase<WQ_I8, true>(q.name, q.epi, q.N, q.K, gs, pool, poolBytes, x, bias, outA, outB, fails);
    }
  }
  printf("quantized GEMV checks: %s (%d failed)\n", fails ? "FAIL" : "all ok", fails);
  return fails;
}

struct Shape { const char* name; int epi; int N; int K; };  // N: weight rows

// ---- flash prefill attention (issue 16) against a direct float32 evaluation ------------------
// One block per (query row, head): every visible score in float32, the softmax, then P V; the
// mask written out as softmax_mask_kernel states it, independently of the kernel's lim() form.
template <typename T>
__global__ void attn_naive_kernel(FlashArgs<T> a, int D, float* out) {
  extern __shared__ float sc[];
  const int r = blockIdx.x, h = blockIdx.y, g = h / a.headsPerGroup;
  const T* q = a.q + r * a.qStride + h * a.qHeadStride;
  const int pos = a.past + r;
  auto visible = [&](int t) { const int u = t - a.prefix; return t < a.prefix || u <= pos || (pos < a.bidirectional && u < a.bidirectional); };
  for (int t = threadIdx.x; t < a.Tc; t += blockDim.x) {
    const T* k = a.k + g * a.kvHeadStride + (long long)t * D;
    float d = 0.f;
    for (int i = 0; i < D; i++) d += TT<T>::f(q[i]) * TT<T>::f(k[i]);
    sc[t] = visible(t) ? d / sqrtf((float)D) : -INFINITY;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = -INFINITY, sum = 0.f;
    for (int t = 0; t < a.Tc; t++) m = fmaxf(m, sc[t]);
    for (int t = 0; t < a.Tc; t++) sum += (sc[t] = expf(sc[t] - m));
    for (int t = 0; t < a.Tc; t++) sc[t] /= sum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int t = 0; t < a.Tc; t++) acc += sc[t] * TT<T>::f(a.v[g * a.kvHeadStride + (long long)t * D + d]);
    out[(long long)r * a.outStride + h * D + d] = acc;
  }
}

template <typename T, int D, int MT>
static void flashRun(const FlashArgs<T>& a, int N) {
  constexpr size_t smem = flashSmemBytes<D, MT>();
  constexpr int rows = flashRows<MT>();
  static bool sized = false;
  if (!sized) { CK(cudaFuncSetAttribute(flash_prefill_kernel<T, D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)); sized = true; }
  flash_prefill_kernel<T, D, MT><<<dim3((a.S + rows - 1) / rows, N), FA_THREADS, smem, st>>>(a);
}
template <typename T, int MT>
static void flashDispatchMt(int D, const FlashArgs<T>& a, int N) {
  switch (D) {
    case 16: flashRun<T, 16, MT>(a, N); break;
    case 32: flashRun<T, 32, MT>(a, N); break;
    case 64: flashRun<T, 64, MT>(a, N); break;
    default: flashRun<T, 128, MT>(a, N); break;
  }
}
// MT: one or two 16-row query tiles a warp (flash_attention.cuh)
template <typename T>
static void flashDispatch(int D, const FlashArgs<T>& a, int N, int mt) {
  mt == 2 ? flashDispatchMt<T, 2>(D, a, N) : flashDispatchMt<T, 1>(D, a, N);
}
// bf16 copies of the fp16 test data (the bf16 cases)
__global__ void half_to_bf16_kernel(const half* src, __nv_bfloat16* dst, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = __float2bfloat16_rn(__half2float(src[i]));
}
static std::vector<float> bf16ToHost(const void* p, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> r(n);
  for (size_t i = 0; i < n; i++) r[i] = __bfloat162float(h[i]);
  return r;
}

struct FlashCase { const char* name; int N, G, D, S, past, prefix, bidirectional; bool interleaved; bool check; bool bf16 = false; };

// One case: the kernel (MT 1 and 2) against attn_naive_kernel (check), or timed.
template <typename T>
static void flashCase(const FlashCase& c, const T* qkv, const T* K, const T* V, T* O, int Tc, int nqkv) {
  FlashArgs<T> a{};
  a.q = qkv, a.qStride = nqkv, a.qHeadStride = c.interleaved ? 3 * c.D : c.D;
  a.k = K, a.v = V, a.kvHeadStride = (long long)Tc * c.D, a.headsPerGroup = c.N / c.G;
  a.out = O, a.outStride = (long long)c.N * c.D;
  a.S = c.S, a.Tc = Tc, a.past = c.past, a.prefix = c.prefix, a.bidirectional = c.bidirectional;
  a.scaleLog2 = 1.4426950408889634f / sqrtf((float)c.D);
  const size_t no = (size_t)c.S * c.N * c.D;
  // visible (query, key) pairs: the attention's matrix work is 4 D flops per pair and head
  double pairs = 0;
  for (int r = 0; r < c.S; r++) {
    const int pos = c.past + r, lim = pos < c.bidirectional ? c.bidirectional - 1 : pos;
    pairs += c.prefix + std::min(lim + 1, c.past + c.S);
  }
  if (c.check) {
    float* ref = (float*)dalloc(no * 4);
    attn_naive_kernel<T><<<dim3(c.S, c.N), 128, Tc * 4, st>>>(a, c.D, ref);
    CK(cudaGetLastError());
    const std::vector<float> want = toHost(ref, no, true);
    // bf16 output and P carry 8 significant bits, fp16 11
    const float tol = std::is_same<T, half>::value ? 2e-2f : 4e-2f;
    for (int mt = 1; mt <= 2; mt++) {
      CK(cudaMemsetAsync(O, 0xff, no * 2, st));  // NaNs: every row must be written
      flashDispatch<T>(c.D, a, c.N, mt);
      CK(cudaGetLastError());
      const float rel = maxRel(std::is_same<T, half>::value ? toHost(O, no, false) : bf16ToHost(O, no), want);
      const bool ok = rel < tol;
      if (!ok) flashFails++;
      printf("flash MT%d %-32s N %2d G %2d D %3d S %5d past %5d prefix %2d bidir %3d: maxrel vs float32 %.1e %s\n", mt, c.name, c.N, c.G,
             c.D, c.S, c.past, c.prefix, c.bidirectional, rel, ok ? "ok" : "FAIL");
    }
    cudaFree(ref);
  } else {
    double us[2];
    for (int mt = 1; mt <= 2; mt++) us[mt - 1] = timeGraph(3, [&](int) { flashDispatch<T>(c.D, a, c.N, mt); });
    printf("flash %-32s S %5d keys %5d: MT1 %9.1f us, %6.1f TFLOP/s; MT2 %9.1f us, %6.1f TFLOP/s (visible pairs)\n", c.name, c.S, Tc,
           us[0], 4.0 * c.D * c.N * pairs / us[0] / 1e6, us[1], 4.0 * c.D * c.N * pairs / us[1] / 1e6);
  }
}

static void flashSection() {
  printf("\nflash prefill attention (flash_attention.cuh): vs a direct float32 evaluation; timings\n");
  const FlashCase cases[] = {
    {"v1 6B, prefix 16, bidir 200", 32, 32, 128, 300, 0, 16, 200, true, true},
    {"v1 6B, 2nd turn", 32, 32, 128, 77, 250, 0, 180, true, true},
    {"v2 6B, causal, past 100", 32, 2, 128, 333, 100, 0, 0, false, true},
    {"v2 6B, prefix 8, past 65", 32, 2, 128, 130, 65, 8, 0, false, true},
    {"v2 small D64", 8, 2, 64, 200, 17, 0, 0, false, true},
    {"v1 small D64 bidir", 8, 8, 64, 150, 0, 4, 149, true, true},
    {"v2 tiny D16", 4, 2, 16, 100, 3, 0, 0, false, true},
    {"v1 tiny D16 bidir", 4, 4, 16, 70, 0, 2, 40, true, true},
    {"D32", 4, 4, 32, 90, 5, 0, 30, false, true},
    {"bf16 v2 6B, causal, past 100", 32, 2, 128, 333, 100, 0, 0, false, true, true},
    {"bf16 v1 6B, prefix 16, bidir 200", 32, 32, 128, 300, 0, 16, 200, true, true, true},
    {"v2 6B 512", 32, 2, 128, 512, 0, 0, 0, false, false},
    {"v1 6B 512 bidir 510", 32, 32, 128, 512, 0, 0, 510, true, false},
    {"v2 6B 2048", 32, 2, 128, 2048, 0, 0, 0, false, false},
    {"v2 6B 2048 after 12952", 32, 2, 128, 2048, 12952, 0, 0, false, false},
    {"v2 6B 8192", 32, 2, 128, 8192, 0, 0, 0, false, false},
    {"v2 6B 15000", 32, 2, 128, 15000, 0, 0, 0, false, false},
  };
  for (const FlashCase& c : cases) {
    const int Tc = c.prefix + c.past + c.S, nqkv = (c.N + 2 * c.G) * c.D;
    const size_t nq = (size_t)c.S * nqkv, nkv = (size_t)c.G * Tc * c.D, no = (size_t)c.S * c.N * c.D;
    half* qkv = (half*)dalloc(nq * 2);
    half* K = (half*)dalloc(nkv * 2);
    half* V = (half*)dalloc(nkv * 2);
    void* O = dalloc(no * 2);
    fill(qkv, nq, 71, 2.f);
    fill(K, nkv, 72, 2.f);
    fill(V, nkv, 73, 1.f);
    CK(cudaGetLastError());
    if (c.bf16) {  // the same values rounded to bf16, in bf16 buffers
      __nv_bfloat16* q16 = (__nv_bfloat16*)dalloc(nq * 2);
      __nv_bfloat16* k16 = (__nv_bfloat16*)dalloc(nkv * 2);
      __nv_bfloat16* v16 = (__nv_bfloat16*)dalloc(nkv * 2);
      half_to_bf16_kernel<<<1024, 256, 0, st>>>(qkv, q16, nq);
      half_to_bf16_kernel<<<1024, 256, 0, st>>>(K, k16, nkv);
      half_to_bf16_kernel<<<1024, 256, 0, st>>>(V, v16, nkv);
      CK(cudaGetLastError());
      flashCase<__nv_bfloat16>(c, q16, k16, v16, static_cast<__nv_bfloat16*>(O), Tc, nqkv);
      cudaFree(q16); cudaFree(k16); cudaFree(v16);
    } else {
      flashCase<half>(c, qkv, K, V, static_cast<half*>(O), Tc, nqkv);
    }
    cudaFree(qkv); cudaFree(K); cudaFree(V); cudaFree(O);
  }
  printf("flash checks: %s (%d failed)\n", flashFails ? "FAIL" : "all ok", flashFails);
}

int main() {
  CK(cudaStreamCreate(&st));
  cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
  printf("device %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
  // copy rate
  {
    const size_t n = 1ull << 30;
    void* a = dalloc(n); void* b = dalloc(n);
    CK(cudaMemset(a, 1, n));
    double us = timeGraph(10, [&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st)); });
    printf("copy 1 GiB: %.1f us, %.3f TB/s (read + write)\n", us, 2.0 * n / us / 1e6);
    cudaFree(a); cudaFree(b);
  }
  const size_t pool = 1400ull << 20;  // weights rotate over this much (> 50 MB L2)
  half* Wp = (half*)dalloc(pool);
  fill(Wp, pool / 2, 1, 0.05f);
  half* x = (half*)dalloc(65536 * 2); fill(x, 65536, 2, 1.f);
  half* bias = (half*)dalloc(300000 * 2); fill(bias, 300000, 3, 0.1f);
  void* outA = dalloc(300000 * 4); void* outB = dalloc(300000 * 4);
  const Shape shapes[] = {
    {"v1 qkv 12288x4096", EPI_NONE, 12288, 4096}, {"v1 dense 4096x4096", EPI_NONE, 4096, 4096},
    {"v1 up+gelu 16384x4096", EPI_GELU, 16384, 4096}, {"v1 down 4096x16384", EPI_NONE, 4096, 16384},
    {"v1 lm_head 130528x4096", EPI_F32, 130528, 4096},
    {"v2 qkv 4608x4096", EPI_NONE, 4608, 4096}, {"v2 up+swiglu 27392x4096", EPI_SWIGLU, 27392, 4096},
    {"v2 down 4096x13696", EPI_NONE, 4096, 13696}, {"v2 lm_head 65024x4096", EPI_F32, 65024, 4096},
  };
  printf("\n%-26s %9s %9s %9s   (us per call; GB/s of weights)  maxrel cfg1,2/cfg0\n", "gemv", "cfg0", "cfg1", "cfg2");
  for (const Shape& s : shapes) {
    const size_t bytes = (size_t)s.N * s.K * 2;
    const int copies = std::max<int>(1, (int)std::min<size_t>(pool / bytes, 16));
    const int reps = std::max(4, std::min(40, copies * 4));
    const int rows = s.epi == EPI_SWIGLU ? s.N / 2 : s.N, F = s.N / 2;
    auto Wi = [&](int i) { return Wp + (size_t)(i % copies) * s.N * s.K; };
    const half* b = s.epi == EPI_F32 ? nullptr : bias;
    const bool f32 = s.epi == EPI_F32;
    double t[3];
    RopeCtx rc{};
    std::vector<float> ref;
    float err = 0;
    for (int cfg = 0; cfg < 3; cfg++) {
      t[cfg] = timeGraph(reps, [&](int i) {
        switch (s.epi) { case EPI_NONE: launchCfg<EPI_NONE>(cfg, Wi(i), x, b, outB, rows, s.K, F, rc); break;
          case EPI_GELU: launchCfg<EPI_GELU>(cfg, Wi(i), x, b, outB, rows, s.K, F, rc); break;
          case EPI_SWIGLU: launchCfg<EPI_SWIGLU>(cfg, Wi(i), x, b, outB, rows, s.K, F, rc); break;
          default: launchCfg<EPI_F32>(cfg, Wi(i), x, b, outB, rows, s.K, F, rc); }
      });
      CK(cudaStreamSynchronize(st));
      // every configuration's last call used the same weight copy, Wi(reps - 1)
      if (cfg == 0) ref = toHost(outB, rows, f32);
      else err = std::max(err, maxRel(toHost(outB, rows, f32), ref));
    }
    printf("%-26s %9.1f %9.1f %9.1f   %6.0f %6.0f %6.0f  %.1e\n", s.name, t[0], t[1], t[2], bytes / t[0] / 1e3, bytes / t[1] / 1e3,
           bytes / t[2] / 1e3, err);
  }
  // the same GEMV over a pool the size of the model's weights (12 GB): TLB reach vs 1.4 GB
  {
    const size_t big = 12ull << 30;
    half* Wb = nullptr;
    if (cudaMalloc(&Wb, big) == cudaSuccess) {
      fill(Wb, big / 2, 7, 0.05f);
      const int N = 27392, K = 4096;
      const size_t bytes = (size_t)N * K * 2;
      const int copies = (int)(big / bytes);
      double tb = timeGraph(copies, [&](int i) { launch2<EPI_SWIGLU, 1, 4, true>(Wb + (size_t)i * N * K, x, bias, outB, N / 2, K, N / 2, RopeCtx{}); });
      double ts = timeGraph(copies, [&](int i) { launch2<EPI_SWIGLU, 1, 4, true>(Wb + (size_t)(i % 8) * N * K, x, bias, outB, N / 2, K, N / 2, RopeCtx{}); });
      printf("v2 up+swiglu cfg0 over %d copies (%.1f GB): %.1f us (%.0f GB/s); over 8 copies (%.1f GB): %.1f us (%.0f GB/s)\n", copies,
             copies * bytes / 1e9, tb, bytes / tb / 1e3, 8 * bytes / 1e9, ts, bytes / ts / 1e3);
      cudaFree(Wb);
    } else {
      cudaGetLastError();
    }
  }
  CK(cudaGetLastError());

  // rotary + KV write: QKV gemv + rotary kernel vs fused, then the attention kernels, at 576 cached tokens
  // the two published decoders, by the engine's feature flags (engine.h EngineConfig): ChatGLM-6B
  // (per-head QKV, 2D rotary, LayerNorm + DeepNorm residual, GELU, biases) and ChatGLM2-6B
  struct Decoder { const char* name; int interleaved, rotary2d, rms, swiglu, bias, G, F; float alpha; };
  for (const Decoder& dec : {Decoder{"v1", 1, 1, 0, 0, 1, 32, 16384, 7.483315f}, Decoder{"v2", 0, 0, 1, 1, 0, 2, 13696, 0.f}}) {
    const int H = 4096, N = 32, D = 128, G = dec.G, maxTotal = 2048;
    const int nqkv = N * D + 2 * G * D;
    const bool post = dec.alpha > 0;  // DeepNorm residual: the norm output is the next residual
    Geom g{dec.interleaved, dec.rotary2d, N, G, D, nqkv, 0, maxTotal};
    const size_t kvBytes = (size_t)G * maxTotal * D * 2;
    half *Kc = (half*)dalloc(kvBytes), *Vc = (half*)dalloc(kvBytes), *Kc2 = (half*)dalloc(kvBytes), *Vc2 = (half*)dalloc(kvBytes);
    fill(Kc, kvBytes / 2, 11, 1.f); fill(Vc, kvBytes / 2, 12, 1.f);
    CK(cudaMemcpy(Kc2, Kc, kvBytes, cudaMemcpyDeviceToDevice)); CK(cudaMemcpy(Vc2, Vc, kvBytes, cudaMemcpyDeviceToDevice));
    const int past = 575;
    std::vector<char> hm(sizeof(StepMeta) + 8, 0);
    StepMeta* m = (StepMeta*)hm.data(); m->past = past; m->S = 1;
    int* pb = (int*)(m + 1); pb[0] = dec.rotary2d ? 574 : past; pb[1] = dec.rotary2d ? 2 : 0;
    StepMeta* dm = (StepMeta*)dalloc(hm.size()); CK(cudaMemcpy(dm, hm.data(), hm.size(), cudaMemcpyHostToDevice));
    std::vector<float> th(D / 4); for (int j = 0; j < D / 4; j++) th[j] = (float)(1.0 / std::pow(10000.0, (2.0 * j) / (D / 2)));
    float* invf = (float*)dalloc(th.size() * 4); CK(cudaMemcpy(invf, th.data(), th.size() * 4, cudaMemcpyHostToDevice));
    half *qkvA = (half*)dalloc(nqkv * 2), *qkvB = (half*)dalloc(nqkv * 2);
    const size_t wb = (size_t)nqkv * H * 2;
    const int copies = std::min<int>(16, pool / wb);
    auto Wi = [&](int i) { return Wp + (size_t)(i % copies) * nqkv * H; };
    double tOld = timeGraph(copies * 2, [&](int i) {
      launchCfg<EPI_NONE>(0, Wi(i), x, bias, qkvA, nqkv, H, 0, RopeCtx{});
      rotary_cache_kernel<half><<<1, 128, 0, st>>>(qkvA, Kc, Vc, dm, invf, g);
    });
    RopeCtx rc{Kc2, Vc2, dm, invf, g};
    double tNew[3];
    for (int cfg = 0; cfg < 3; cfg++) tNew[cfg] = timeGraph(copies * 2, [&](int i) { launchCfg<EPI_ROPE>(cfg, Wi(i), x, bias, qkvB, nqkv / 2, H, 0, rc); });
    CK(cudaStreamSynchronize(st));
    // compare q and the cache rows just written
    float eq = maxRel(toHost(qkvB, N * D, false), toHost(qkvA, N * D, false));  // v1 q is interleaved: compare q rows
    if (dec.interleaved) {
      auto a = toHost(qkvA, nqkv, false), b = toHost(qkvB, nqkv, false);
      std::vector<float> qa, qb;
      for (int h = 0; h < N; h++) for (int d = 0; d < D; d++) qa.push_back(a[h * 3 * D + d]), qb.push_back(b[h * 3 * D + d]);
      eq = maxRel(qb, qa);
    }
    std::vector<float> ka, kb, va, vb;
    {
      auto K1 = toHost(Kc, kvBytes / 2, false), K2 = toHost(Kc2, kvBytes / 2, false), V1 = toHost(Vc, kvBytes / 2, false), V2 = toHost(Vc2, kvBytes / 2, false);
      for (int hh = 0; hh < G; hh++) for (int d = 0; d < D; d++) {
        const size_t o = ((size_t)hh * maxTotal + past) * D + d;
        ka.push_back(K1[o]); kb.push_back(K2[o]); va.push_back(V1[o]); vb.push_back(V2[o]);
      }
    }
    printf("\n%s qkv+rotary: gemv + rotary kernel %.1f us; fused cfg0/1/2 %.1f / %.1f / %.1f us; maxrel q %.1e k %.1e v %.1e\n", dec.name, tOld,
           tNew[0], tNew[1], tNew[2], eq, maxRel(kb, ka), maxRel(vb, va));
    // attention at past = 575 (576 keys), fill the cache fully random
    fill(Kc, kvBytes / 2, 21, 1.f); fill(Vc, kvBytes / 2, 22, 1.f);
    fill(qkvA, nqkv, 23, 1.f);
    const float scale = 1.f / std::sqrt((float)D);
    half *ctxA = (half*)dalloc(N * D * 2), *ctxB = (half*)dalloc(N * D * 2);
    unsigned* counter = (unsigned*)dalloc(N * 4); CK(cudaMemset(counter, 0, N * 4));
    // attention per KV group (decode_attention.cuh) against per head (attn_decode2_kernel): several
    // lengths, with and without a prefix, and few splits (several tiles per split)
    {
      const int hpbDef = G == N ? 1 : 4;
      struct Case { int past, prefix, tile, grid, hpb; };
      const Case cases[] = {{575, 0, 64, 32, hpbDef}, {575, 0, 32, 32, hpbDef}, {575, 0, 64, 32, G == N ? 1 : 2},
                            {575, 0, 64, 32, 1}, {1500, 16, 64, 32, hpbDef}, {1500, 16, 64, 4, hpbDef},
                            {0, 0, 64, 32, hpbDef}, {40, 3, 16, 2, hpbDef}};
      float* partO = (float*)dalloc((size_t)N * 64 * D * 4); float* partML = (float*)dalloc((size_t)N * 64 * 2 * 4);
      for (const Case& cs : cases) {
        Geom gc = g; gc.prefix = cs.prefix;
        m->past = cs.past; CK(cudaMemcpy(dm, hm.data(), hm.size(), cudaMemcpyHostToDevice));
        const int ns = 8;
        double tb = timeGraph(28, [&](int) {
          attn_decode2_kernel<half><<<dim3(N, ns), 128, 0, st>>>(qkvA, Kc, Vc, dm, gc, scale, partO, partML, counter, ctxA);
        });
        double tg = timeGraph(28, [&](int) {
          attn_decode_gqa_kernel<half><<<dim3(N / cs.hpb, cs.grid), DA_THREADS, 0, st>>>(qkvA, Kc, Vc, KvQuant{}, dm, gc, scale, cs.tile, cs.hpb,
                                                                                          partO, partML, counter, ctxB);
        });
        CK(cudaStreamSynchronize(st));
        const DecodeSplits sp(cs.prefix + cs.past + 1, cs.tile, cs.grid);
        printf("%s attention %d keys (prefix %d), tile %d, %d heads/block, %d of %d splits: per head %.1f us, per block of heads %.1f us; maxrel %.1e\n",
               dec.name, cs.prefix + cs.past + 1, cs.prefix, cs.tile, cs.hpb, sp.active, cs.grid, tb, tg,
               maxRel(toHost(ctxB, N * D, false), toHost(ctxA, N * D, false)));
        // The INT8 cache (kv_int8.cuh): the Q8 kernel on the rows quantized from Kc / Vc, the new
        // row quantized by the kernel from qkvA, against the fp16 kernel on the dequantized cache
        // with that row quantized by kv_quant_kernel; and the row the kernel stored, byte for byte.
        {
          const int newRow = cs.prefix + cs.past;
          const size_t rows = (size_t)G * maxTotal;
          int8_t* q8 = (int8_t*)dalloc(4 * rows * D);
          float* sc = (float*)dalloc(4 * rows * 4);
          CK(cudaMemset(q8, 0, 4 * rows * D)); CK(cudaMemset(sc, 0, 4 * rows * 4));
          const KvQuant kq{q8, q8 + rows * D, sc, sc + rows}, kr{q8 + 2 * rows * D, q8 + 3 * rows * D, sc + 2 * rows, sc + 3 * rows};
          const long long gstr = dec.interleaved ? 3LL * D : D;
          for (const KvQuant& k : {kq, kr})
            if (newRow > 0) kv_quant_kernel<half><<<dim3(newRow, G, 2), 32, 0, st>>>(Kc, Vc, D, (long long)maxTotal * D, k, maxTotal, 0, D);
          kv_quant_kernel<half><<<dim3(1, G, 2), 32, 0, st>>>(qkvA + gc.kOff(0), qkvA + gc.vOff(0), nqkv, gstr, kr, maxTotal, newRow, D);
          half* kd = (half*)dalloc(2 * rows * D * 2);
          kv_dequant_kernel<half><<<1024, 256, 0, st>>>(kr, G, maxTotal, maxTotal, D, kd);
          CK(cudaGetLastError());
          attn_decode_gqa_kernel<half><<<dim3(N / cs.hpb, cs.grid), DA_THREADS, 0, st>>>(qkvA, kd, kd + rows * D, KvQuant{}, dm, gc, scale, cs.tile, cs.hpb,
                                                                                          partO, partML, counter, ctxA);
          double t8 = timeGraph(28, [&](int) {
            attn_decode_gqa_kernel<half, true><<<dim3(N / cs.hpb, cs.grid), DA_THREADS, 0, st>>>(qkvA, nullptr, nullptr, kq, dm, gc, scale, cs.tile,
                                                                                                  cs.hpb, partO, partML, counter, ctxB);
          });
          CK(cudaStreamSynchronize(st));
          std::vector<int8_t> a(4 * rows * D); std::vector<float> as(4 * rows);
          CK(cudaMemcpy(a.data(), q8, a.size(), cudaMemcpyDeviceToHost)); CK(cudaMemcpy(as.data(), sc, as.size() * 4, cudaMemcpyDeviceToHost));
          size_t bad = 0;  // the cache the kernel left against the reference's, rows 0..newRow of both sides
          for (int side = 0; side < 2; side++) for (int gg = 0; gg < G; gg++) for (int r = 0; r <= newRow; r++) {
            const size_t row = gg * (size_t)maxTotal + r;
            bad += as[side * rows + row] != as[(2 + side) * rows + row];
            for (int d = 0; d < D; d++) bad += a[(side * rows + row) * D + d] != a[((2 + side) * rows + row) * D + d];
          }
          const float rel = maxRel(toHost(ctxB, N * D, false), toHost(ctxA, N * D, false));
          printf("%s attention %d keys, INT8 cache: %.1f us (fp16 %.1f); maxrel vs fp16 kernel on the dequantized cache %.1e; cache values differing %zu%s\n",
                 dec.name, newRow + 1, t8, tg, rel, bad, rel > 4e-3 || bad ? "  FAIL" : "");
          if (rel > 4e-3 || bad) kvFails++;
          cudaFree(q8); cudaFree(sc); cudaFree(kd);
        }
      }
      m->past = past; CK(cudaMemcpy(dm, hm.data(), hm.size(), cudaMemcpyHostToDevice));
      cudaFree(partO); cudaFree(partML);
    }
    // the small kernels
    half *res = (half*)dalloc(H * 2), *nout = (half*)dalloc(H * 2), *nw = (half*)dalloc(H * 2);
    fill(res, H, 31, 1.f); fill(nw, H, 32, 1.f);
    double tn = timeGraph(56, [&](int) {
      if (!dec.rms) add_norm_kernel<half, false><<<1, 256, 0, st>>>(x, res, nout, nw, bias, 7.48f, H, 1e-5f);
      else add_norm_kernel<half, true><<<1, 256, 0, st>>>(nullptr, res, nout, nw, nullptr, 1.f, H, 1e-5f);
    });
    printf("%s add_norm %.1f us\n", dec.name, tn);
    // norms fused into the GEMVs (engine layersFusedNorm) against dense GEMV + norm kernel + up GEMV:
    // bit-identical outputs, and the time of the three kernels against the two
    {
      const int F = dec.F, fup = dec.swiglu ? 2 * F : F, upRows = F;
      const float alpha = post ? dec.alpha : 1.f;
      half *ctx = (half*)dalloc(H * 2), *resA = (half*)dalloc(H * 2), *resB = (half*)dalloc(H * 2), *tmp = (half*)dalloc(H * 2);
      half *lnB = (half*)dalloc(H * 2), *lnB2 = (half*)dalloc(H * 2), *nb = (half*)dalloc(H * 2);
      half *upA = (half*)dalloc((size_t)fup * 2), *upB = (half*)dalloc((size_t)fup * 2);
      fill(ctx, H, 51, 1.f); fill(resA, H, 52, 1.f); fill(nb, H, 53, 0.1f);
      const size_t dB = (size_t)H * H * 2, uB = (size_t)fup * H * 2;
      half* Wd = (half*)dalloc(dB); half* Wu = (half*)dalloc(uB);
      fill(Wd, dB / 2, 54, 0.02f); fill(Wu, uB / 2, 55, 0.02f);
      const half* bd = dec.bias ? bias : nullptr;
      const half* nbias = dec.rms ? nullptr : nb;
      NormCtx rc0{}; rc0.rms = dec.rms; rc0.alpha = alpha;
      NormCtx ncu = rc0; ncu.w = nw; ncu.b = nbias; ncu.normOut = lnB2; ncu.eps = 1e-5f;
      NormCtx ncr = rc0;
      auto runA = [&]() {
        gemv2_kernel<half, EPI_NONE, 1, 8, true, false><<<H / 8, GEMV2_THREADS, 0, st>>>(Wd, ctx, bd, tmp, H, H, F, RopeCtx{}, NormCtx{});
        if (!dec.rms) add_norm_kernel<half, false><<<1, 256, 0, st>>>(tmp, resA, lnB, nw, nbias, alpha, H, 1e-5f);
        else add_norm_kernel<half, true><<<1, 256, 0, st>>>(tmp, resA, lnB, nw, nullptr, 1.f, H, 1e-5f);
        if (!dec.swiglu) gemv2_kernel<half, EPI_GELU, 1, 8, true, false><<<(upRows + 7) / 8, GEMV2_THREADS, 0, st>>>(Wu, lnB, bias, upA, upRows, H, F, RopeCtx{}, NormCtx{});
        else gemv2_kernel<half, EPI_SWIGLU, 1, 4, true, false><<<(upRows + 7) / 8, GEMV2_THREADS, 0, st>>>(Wu, lnB, nullptr, upA, upRows, H, F, RopeCtx{}, NormCtx{});
      };
      // B: a post-norm residual is resA (alpha * res + y into tmp), a pre-norm one updates resB in place
      auto runB = [&]() {
        half* v = post ? tmp : resB;
        ncr.res = post ? (const void*)resA : (const void*)resB;
        gemv2_kernel<half, EPI_RES, 1, 8, true, false><<<H / 8, GEMV2_THREADS, 0, st>>>(Wd, ctx, bd, v, H, H, F, RopeCtx{}, ncr);
        if (!dec.swiglu) gemv2_kernel<half, EPI_GELU, 1, 8, true, true><<<(upRows + 7) / 8, GEMV2_THREADS, 0, st>>>(Wu, v, bias, upB, upRows, H, F, RopeCtx{}, ncu);
        else gemv2_kernel<half, EPI_SWIGLU, 1, 4, true, true><<<(upRows + 7) / 8, GEMV2_THREADS, 0, st>>>(Wu, v, nullptr, upB, upRows, H, F, RopeCtx{}, ncu);
      };
      // one pass each from the same residual, compared bit for bit
      CK(cudaMemcpy(resB, resA, H * 2, cudaMemcpyDeviceToDevice));
      half* res0 = (half*)dalloc(H * 2); CK(cudaMemcpy(res0, resA, H * 2, cudaMemcpyDeviceToDevice));
      runA(); runB(); CK(cudaStreamSynchronize(st));
      const auto ua = toHost(upA, upRows, false), ub = toHost(upB, upRows, false);
      size_t diff = 0; for (int i = 0; i < upRows; i++) diff += ua[i] != ub[i];
      const auto ra = toHost(post ? lnB : resA, H, false), rb = toHost(post ? lnB2 : resB, H, false);
      size_t rdiff = 0; for (int i = 0; i < H; i++) rdiff += ra[i] != rb[i];
      // the residual of A was updated in place (v2); time from copies of the starting residual
      double tA = timeGraph(28, [&](int) { CK(cudaMemcpyAsync(resA, res0, H * 2, cudaMemcpyDeviceToDevice, st)); runA(); });
      double tB = timeGraph(28, [&](int) { CK(cudaMemcpyAsync(resB, res0, H * 2, cudaMemcpyDeviceToDevice, st)); runB(); });
      printf("%s dense + norm + up: kernels %.1f us, norm fused %.1f us (incl. a 8 KB copy each); up outputs differing %zu of %d, %s differing %zu\n",
             dec.name, tA, tB, diff, upRows, post ? "normalised row" : "residual", rdiff);
      for (void* q : {(void*)ctx, (void*)resA, (void*)resB, (void*)tmp, (void*)lnB, (void*)lnB2, (void*)nb, (void*)upA, (void*)upB, (void*)Wd, (void*)Wu, (void*)res0}) cudaFree(q);
    }
    cudaFree(Kc); cudaFree(Vc); cudaFree(Kc2); cudaFree(Vc2);
  }
  {
    float* lg = (float*)dalloc(130528 * 4);
    fill(lg, 130528, 41, 1.f);
    int* tok = (int*)dalloc(4);
    std::vector<char> hm(sizeof(StepMeta) + 8, 0); StepMeta* m = (StepMeta*)hm.data(); m->greedy = 1;
    StepMeta* dm = (StepMeta*)dalloc(hm.size()); CK(cudaMemcpy(dm, hm.data(), hm.size(), cudaMemcpyHostToDevice));
    double ts = timeGraph(20, [&](int) { sample_kernel<<<1, 1024, 0, st>>>(lg, 130528, dm, tok); });
    printf("sample (greedy, V 130528) %.1f us\n", ts);
  }
  flashSection();
  const int qfails = quantSection(reinterpret_cast<uint8_t*>(Wp), pool, x, bias, outA, outB);
  CK(cudaDeviceSynchronize());
  return qfails || kvFails || flashFails ? 1 : 0;
}
