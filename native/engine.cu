// glmtool's CUDA engine: weights, KV cache, the decoder's launch sequence for prefill (cuBLAS
// tensor-core GEMMs) and decode (GEMV kernels, captured once as a CUDA graph and replayed).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cublas_dl.h"
#include "engine.h"
#include "decode_attention.cuh"
#include "kernels.cuh"
#include "gemv_mma.cuh"
#include "flash_attention.cuh"

namespace glm {

namespace {

void check(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                             ") [engine.cu:" + std::to_string(line) + "]");
  }
}
#define CK(x) check((x), #x, __LINE__)
#define CKL() check(cudaGetLastError(), "kernel launch", __LINE__)

void checkBlas(int status, const char* what, int line) {
  if (status != 0) {
    throw std::runtime_error(std::string(what) + " failed: cuBLAS status " + std::to_string(status) + " [engine.cu:" +
                             std::to_string(line) + "]");
  }
}
#define CB(x) checkBlas((x), #x, __LINE__)

constexpr size_t kStageBytes = 64ull << 20;     // each of the two pinned staging buffers
constexpr size_t kScoresBudget = 96ull << 20;   // prefill attention scores + probabilities per query chunk
constexpr size_t kBlasWorkspace = 32ull << 20;
constexpr int kMaxChunk = 2048;                 // most tokens one forward() takes
constexpr size_t kLogitsChunkBytes = 64ull << 20;
// Quantized prefill: rows of a weight dequantized per GEMM, at most this many bytes as T (kept
// small so the GEMM finds its rows in L2 and the buffer adds little to peak memory).
constexpr size_t kScratchBytes = 32ull << 20;

static_assert(2 + 4 * MANY_MAX <= 2 * kMaxChunk, "decodeMany's plan fits the step metadata buffer");

bool isPerLayer(int kind) { return kind <= B_LN2 || kind == PREFIX_K || kind == PREFIX_V || (kind >= S_QKV && kind <= S_DOWN); }
// The four per-layer linears a quantized model stores as int8 / int4, and their scale slots.
bool isQuantKind(int kind) { return kind == W_QKV || kind == W_DENSE || kind == W_UP || kind == W_DOWN; }
int scaleKind(int kind) { return kind == W_QKV ? S_QKV : kind == W_DENSE ? S_DENSE : kind == W_UP ? S_UP : S_DOWN; }

// A GEMV / GEMM weight: its address and, quantized, its scales and row layout.
struct Wt {
  const void* w;
  QuantCtx q;  // q.scale == nullptr: T weights
  int kind;
  int layer;
};

}  // namespace

// ---- probe -----------------------------------------------------------------------------------

DeviceInfo probe() {
  DeviceInfo d;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  cudaDriverGetVersion(&d.driverVersion);
  cudaRuntimeGetVersion(&d.runtimeVersion);
  if (e != cudaSuccess) {
    if (d.driverVersion == 0) {
      d.reason = "no NVIDIA driver was found (libcuda.so.1 could not be loaded)";
    } else if (e == cudaErrorInsufficientDriver) {
      d.reason = "the NVIDIA driver supports CUDA " + std::to_string(d.driverVersion / 1000) + "." +
                 std::to_string(d.driverVersion % 1000 / 10) + ", older than the CUDA " + std::to_string(d.runtimeVersion / 1000) +
                 " runtime glmtool's engine was built with; update the driver";
    } else if (e == cudaErrorNoDevice) {
      d.reason = "the NVIDIA driver sees no CUDA-capable GPU";
    } else {
      d.reason = std::string("the NVIDIA driver cannot be used (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
    }
    cudaGetLastError();
    return d;
  }
  if (n == 0) {
    d.reason = "the NVIDIA driver reports no GPU";
    return d;
  }
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, 0);
  if (e != cudaSuccess) {
    d.reason = std::string("cannot read the GPU's properties (") + cudaGetErrorString(e) + ")";
    return d;
  }
  d.name = p.name;
  d.ccMajor = p.major;
  d.ccMinor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  d.l2Bytes = p.l2CacheSize;
  int clockKHz = 0, busBits = 0;
  cudaDeviceGetAttribute(&clockKHz, cudaDevAttrMemoryClockRate, 0);
  cudaDeviceGetAttribute(&busBits, cudaDevAttrGlobalMemoryBusWidth, 0);
  d.peakBandwidth = 2.0 * clockKHz * 1e3 * busBits / 8.0;  // double data rate
  if (p.major < 8) {
    d.reason = std::string("the GPU ") + p.name + " has compute capability " + std::to_string(p.major) + "." +
               std::to_string(p.minor) + "; glmtool's CUDA engine is built for 8.0 (Ampere) and newer";
    return d;
  }
  e = cudaMemGetInfo(&d.freeMemory, &d.totalMemory);
  if (e != cudaSuccess) {
    d.reason = std::string("cannot create a CUDA context on ") + p.name + " (" + cudaGetErrorString(e) + ")";
    cudaGetLastError();
    return d;
  }
  std::string why;
  const Cublas* b = loadCublas(&why);
  if (!b) {
    d.reason = why;
    return d;
  }
  d.cublasPath = b->path;
  cublasHandle_t h = nullptr;
  if (b->create(&h) != 0) {
    d.reason = "cuBLAS (" + b->path + ") could not create a handle on " + p.name;
    return d;
  }
  b->getVersion(h, &d.cublasVersion);
  b->destroy(h);
  d.ok = true;
  return d;
}

double measureCopyBandwidth(size_t bytes, int iters) {
  void *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, bytes));
  try {
    CK(cudaMalloc(&b, bytes));
  } catch (...) {
    cudaFree(a);
    throw;
  }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  for (int i = 0; i < iters; i++) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    ms.push_back(t);
  }
  cudaError_t err = cudaGetLastError();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  CK(err);
  std::sort(ms.begin(), ms.end());
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3);
}

// ---- the engine --------------------------------------------------------------------------------

struct Bufs {
  void *x, *lnA, *lnB, *qkv, *ctx, *tmp, *up, *act;
};

struct Engine::Impl {
  EngineConfig c;
  const Cublas* blas = nullptr;
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr, copyStream = nullptr;
  int D, H, N, G, F, V, L, P, maxTotal, nqkv, attnDim, fup, esz, nsplit;
  // Decode attention: 2 (default) one block per few heads of a KV group and key split, cached
  // rows copied before the QKV projection finishes (decode_attention.cuh); 1 one block per
  // query head and split (GLMTOOL_CUDA_ATTN=head, for A/B runs).
  int attnMode = 2;
  // Prefill attention: 1 (default), the tiled online-softmax kernel (flash_attention.cuh; head
  // sizes 16, 32, 64, 128), one 16-row tile a warp; 2 the same with two (MT 2); 0 cuBLAS scores +
  // softmax_mask_kernel + cuBLAS, with its score buffer (GLMTOOL_CUDA_FLASH=0|1|2).
  int flash = 1;
  int gqaTile = 64, gqaSplits = 1, gqaHeads = 1;
  // Decode norms fused into the GEMVs (layersFusedNorm): ChatGLM2-6B's RMSNorm by default, not
  // ChatGLM-6B's LayerNorm (init()); GLMTOOL_CUDA_NORM=fused|kernel overrides.
  bool fuseNorm = false;
  float alpha;  // DeepNorm alpha of the post-norm residual (c.deepnormAlpha; 1 for a pre-norm residual)
  bool post;    // post-norm (DeepNorm) residual: the residual is the norm's output (c.deepnormAlpha > 0)
  Geom geom;
  // quantized linears (c.quantBits 4 / 8): per kind, rows, K, the file's bytes per row and the
  // engine's (padded to 16 bytes, the GEMV's load)
  int qRows[KIND_COUNT] = {}, qK[KIND_COUNT] = {};
  size_t qSrcRow[KIND_COUNT] = {}, qRowBytes[KIND_COUNT] = {};
  // Quantized single-row GEMVs (dense, down, v1 up): rows per warp. int4 spends ~4 instructions
  // per weight (unpack, convert, FMA, x convert) against int8's ~3.5 per byte, so int4 shares each
  // x conversion between 2 rows by default; GLMTOOL_CUDA_QRPW=1|2 overrides (A/B).
  int qRowsPerWarp = 1;
  // Quantized decode GEMVs on tensor cores (gemv_mma.cuh), the weights repacked into its tiles
  // on load (finishLoad): fp16 models whose quantized linears have rows, K (and F) multiples of
  // 16; GLMTOOL_CUDA_QMMA=0 keeps the row-major layout and gemvq_kernel (A/B runs).
  bool qmma = false;
  bool qmmaTiles1 = true;  // single-row outputs: one tile a block (GLMTOOL_CUDA_QMMA=2: two)
  void* scratch = nullptr;  // prefill: one dequantized weight (fp16 / bf16)
  size_t scratchBytes = 0;

  std::map<void*, size_t> sizes;
  size_t allocated = 0, peakAllocated = 0, peakUsed = 0, total = 0;

  // weights: one arena for every device slot
  char* arena = nullptr;
  std::vector<size_t> slotOffset, slotSize, slotFilled;  // [kind * L + layer]
  char* hostEmbedding = nullptr;   // pinned and mapped: decodeMany's gather kernel reads rows from it
  const void* dEmbed = nullptr;    // its device address
  std::vector<void*> prefixStage;  // [2 * L]: keys, values of layer i at 2i, 2i+1
  bool loaded = false;

  char* kv = nullptr;
  size_t kvLayerBytes = 0;  // one of K or V of one layer
  // The INT8 KV cache (c.kvDtype 1, kv_int8.cuh): kv holds int8 rows, kvScale their scales
  // [2 * L][G][maxTotal] (keys of layer l at 2l, values at 2l + 1), and kvStage the prefill
  // attention's T copy of one layer's visible keys then values [2][G][maxTotal][D].
  bool kv8 = false;
  float* kvScale = nullptr;
  void* kvStage = nullptr;
  size_t kvStageBytes = 0;

  Bufs dec{};  // decode buffers (one token)
  float *partO = nullptr, *partML = nullptr, *logits = nullptr;
  unsigned* attnCounter = nullptr;  // per head: splits finished (attn_decode2_kernel)
  int* dToken = nullptr;
  float* invf = nullptr;
  void* blasWs = nullptr;

  Bufs pre{};  // prefill buffers, grown on demand
  int preCap = 0;
  void* scores = nullptr;  // float scores then T probabilities
  void* work = nullptr;  // scores and scratch (ensureWork)
  size_t workCap = 0;
  float* logitsAll = nullptr;
  size_t logitsAllRows = 0;

  char* dMeta = nullptr;   // StepMeta + posblock[2 * kMaxChunk]
  char* hMeta = nullptr;   // pinned mirror
  char* hRows = nullptr;   // pinned embedding rows [kMaxChunk, H]
  int* hToken = nullptr;   // pinned
  char* staging[2] = {nullptr, nullptr};
  cudaEvent_t stageEv[2] = {nullptr, nullptr};
  int nextStage = 0;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t graphExec = nullptr;
  cudaGraph_t graphMany = nullptr;  // decodeMany's step: gather, decoder, sampling, advance
  cudaGraphExec_t graphManyExec = nullptr;
  bool pdlSupported = false;  // Hopper or newer, and not turned off (GLMTOOL_CUDA_PDL=0)
  bool usePdl = true;
  bool pdl = false;           // launch the next kernels with programmatic stream serialization

  // Every kernel goes through here: in the decode step (pdl) with the programmatic-serialization
  // attribute, so each kernel launches while its predecessor drains (kernels.cuh pdl_wait()).
  template <typename... KArgs, typename... Args>
  void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, Args... args) {
    launchSmem(kernel, grid, block, 0, args...);
  }
  template <typename... KArgs, typename... Args>
  void launchSmem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
  }
  void dropGraph() {
    if (graphExec) cudaGraphExecDestroy(graphExec), graphExec = nullptr;
    if (graph) cudaGraphDestroy(graph), graph = nullptr;
    if (graphManyExec) cudaGraphExecDestroy(graphManyExec), graphManyExec = nullptr;
    if (graphMany) cudaGraphDestroy(graphMany), graphMany = nullptr;
  }

  // -- memory ------------------------------------------------------------------------------------
  void sampleUsed() {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) == cudaSuccess) {
      total = t;
      peakUsed = std::max(peakUsed, t - f);
    }
  }
  void* dmalloc(size_t bytes) {
    void* p = nullptr;
    bytes = std::max<size_t>(bytes, 256);
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t f = 0, t = 0;
      cudaMemGetInfo(&f, &t);
      throw std::runtime_error("out of GPU memory: cudaMalloc of " + std::to_string(bytes >> 20) + " MiB failed (" +
                               cudaGetErrorString(e) + "; " + std::to_string(f >> 20) + " MiB free of " +
                               std::to_string(t >> 20) + " MiB)");
    }
    sizes[p] = bytes;
    allocated += bytes;
    peakAllocated = std::max(peakAllocated, allocated);
    sampleUsed();
    return p;
  }
  void dfree(void* p) {
    if (!p) return;
    auto it = sizes.find(p);
    if (it != sizes.end()) {
      allocated -= it->second;
      sizes.erase(it);
    }
    cudaFree(p);
  }

  size_t& slot(std::vector<size_t>& v, int kind, int layer) { return v[(size_t)kind * L + (isPerLayer(kind) ? layer : 0)]; }

  char* Kc(int l) const { return kv + (size_t)(2 * l) * kvLayerBytes; }
  char* Vc(int l) const { return kv + (size_t)(2 * l + 1) * kvLayerBytes; }
  KvQuant kvq(int l) const {
    if (!kv8) return KvQuant{};
    const size_t rows = (size_t)G * maxTotal;
    return KvQuant{reinterpret_cast<int8_t*>(Kc(l)), reinterpret_cast<int8_t*>(Vc(l)), kvScale + 2 * l * rows, kvScale + (2 * l + 1) * rows};
  }
  // The decode QKV GEMV's rotary epilogue: k and v into the float cache, or (INT8) left in the QKV buffer
  RopeCtx ropeCtx(int l) const {
    return RopeCtx{kv8 ? nullptr : Kc(l), kv8 ? nullptr : Vc(l), reinterpret_cast<const StepMeta*>(dMeta), invf, geom};
  }
  const void* w(int kind, int layer) {
    const size_t s = slot(slotSize, kind, layer);
    return s ? arena + slot(slotOffset, kind, layer) : nullptr;
  }
  bool quantized() const { return c.quantBits != 0; }
  // Bytes a slot takes from the file: its size, except quantized rows (packed, unpadded there).
  size_t uploadBytes(int kind, int layer) {
    if (quantized() && isQuantKind(kind)) return (size_t)qRows[kind] * qSrcRow[kind];
    return slot(slotSize, kind, layer);
  }
  Wt wt(int kind, int layer) {
    Wt r{w(kind, layer), QuantCtx{}, kind, layer};
    if (quantized() && isQuantKind(kind)) {
      r.q.scale = static_cast<const half*>(w(scaleKind(kind), layer));
      r.q.groups = c.groupSize ? qK[kind] / c.groupSize : 1;
      r.q.groupUnits = c.groupSize ? c.groupSize / (c.quantBits == 8 ? 16 : 32) : 0;
      r.q.rowBytes = (int)qRowBytes[kind];
    }
    return r;
  }

  explicit Impl(const EngineConfig& cfg) : c(cfg) {}

  // Allocates everything; on failure the caller runs release(), which frees what was taken.
  void init() {
    D = c.headDim, H = c.hidden, N = c.heads, G = c.kvHeads, F = c.ffn, V = c.vocab, L = c.layers, P = c.prefixLength;
    if (L <= 0 || H <= 0 || N <= 0 || G <= 0 || F <= 0 || V <= 0 || c.maxLength <= 0 || P < 0)
      throw std::runtime_error("engine sizes must be positive");
    if (D % 8 || D > 128 || (c.rotary2d && D % 4))
      throw std::runtime_error("head dimension " + std::to_string(D) + " is not supported (a multiple of 8, at most 128)");
    if (N % G) throw std::runtime_error("heads must be a multiple of the KV groups");
    if (H % 8 || F % 8 || (N * D) % 8) throw std::runtime_error("hidden, ffn and heads*head_dim must be multiples of 8");
    if (H > NORM_PER_THREAD * 1024) throw std::runtime_error("hidden size too large for the norm kernel");
    // per-head [q; k; v] rows have one K/V head per query head
    if (c.interleavedQkv && G != N) throw std::runtime_error("per-head QKV rows need as many KV heads as heads");
    if (!(c.deepnormAlpha >= 0.f) || !std::isfinite(c.deepnormAlpha))
      throw std::runtime_error("the DeepNorm alpha must be a finite number >= 0");
    if (!(c.ropeBase > 0) || !std::isfinite(c.ropeBase)) throw std::runtime_error("the rotary base must be a finite number > 0");
    // The norm kernels implement RMSNorm with a pre-norm residual (ChatGLM2-6B) and LayerNorm with
    // a post-norm DeepNorm residual (ChatGLM-6B); no published ChatGLM mixes them.
    post = c.deepnormAlpha > 0.f;
    if (c.rmsnorm == post)
      throw std::runtime_error(c.rmsnorm ? "RMSNorm with a post-norm (DeepNorm) residual is not implemented by the CUDA engine"
                                         : "LayerNorm with a pre-norm residual is not implemented by the CUDA engine");
    attnDim = N * D;
    nqkv = attnDim + 2 * G * D;
    fup = c.swiglu ? 2 * F : F;
    esz = 2;
    maxTotal = P + c.maxLength;
    // ChatGLM-6B's is sqrt(2 * 28) at every depth: the published get_layer() never passes
    // num_layers to GLMBlock, whose default is 28 (src/models/chatglm-v1.ts V1_DEEPNORM_ALPHA).
    alpha = post ? c.deepnormAlpha : 1.f;
    // 256 keys per split at the full length (32 splits of 64 measured slower at 576 keys: 12.7 vs 9.0 us)
    nsplit = std::min(32, std::max(4, (maxTotal + 255) / 256));
    if (const char* v = std::getenv("GLMTOOL_CUDA_ATTN")) attnMode = std::string(v) == "head" ? 1 : 2;
    if (const char* v = std::getenv("GLMTOOL_CUDA_FLASH")) flash = std::string(v) == "2" ? 2 : std::string(v) == "0" ? 0 : 1;
    if (!(D == 16 || D == 32 || D == 64 || D == 128)) flash = 0;
    // Norms fused into the decode GEMVs: RMSNorm (v2) by default; LayerNorm (v1: two reductions
    // and a bias per block of 2048) measured slower (bench/RESULTS.md, H200 run 6).
    fuseNorm = c.rmsnorm;
    if (const char* v = std::getenv("GLMTOOL_CUDA_NORM")) fuseNorm = std::string(v) == "fused";
    fuseNorm = fuseNorm && H <= NORM_FUSED_MAX;
    if (attnMode == 2 && D > DA_DMAX)
      throw std::runtime_error("head dimension " + std::to_string(D) + " is not supported by the decode attention (at most " +
                               std::to_string(DA_DMAX) + ")");
    // heads per block: the largest divisor of the group's heads up to 2 (ChatGLM2-6B, H200 run 6:
    // 2 heads 280.3 tok/s, 4 heads 277.3, one per head 279.1)
    for (int h = std::min(2, N / G); h >= 1; h--)
      if ((N / G) % h == 0) {
        gqaHeads = h;
        break;
      }
    if (const char* v = std::getenv("GLMTOOL_CUDA_ATTN_HEADS")) {
      const int h = std::atoi(v);
      if (h >= 1 && h <= DA_HEADS && (N / G) % h == 0) gqaHeads = h;
    }
    gqaTile = 64;
    if (const char* v = std::getenv("GLMTOOL_CUDA_ATTN_TILE")) gqaTile = std::min(DA_TILE_MAX, std::max(8, std::atoi(v)));
    // at most DA_TILE_MAX splits and ~1024 blocks (whole tiles per split beyond that)
    gqaSplits = std::max(1, std::min({(maxTotal + gqaTile - 1) / gqaTile, DA_TILE_MAX, std::max(1, 1024 / (N / gqaHeads))}));
    geom = Geom{c.interleavedQkv ? 1 : 0, c.rotary2d ? 1 : 0, N, G, D, nqkv, P, maxTotal};
    if (c.kvDtype != 0 && c.kvDtype != 1) throw std::runtime_error("KV cache type " + std::to_string(c.kvDtype) + " is not 0 (float) or 1 (int8)");
    kv8 = c.kvDtype == 1;
    if (kv8 && attnMode != 2) throw std::runtime_error("the INT8 KV cache needs the decode attention per KV group (GLMTOOL_CUDA_ATTN=head does not read it)");
    if (kv8 && D % 16) throw std::runtime_error("the INT8 KV cache needs a head dimension that is a multiple of 16, got " + std::to_string(D));

    std::string why;
    blas = loadCublas(&why);
    if (!blas) throw std::runtime_error(why);
    CK(cudaSetDevice(c.device));
    int major = 0;
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c.device));
    const char* pdlEnv = std::getenv("GLMTOOL_CUDA_PDL");
    pdlSupported = major >= 9 && !(pdlEnv && std::string(pdlEnv) == "0");
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&copyStream, cudaStreamNonBlocking));
    CB(blas->create(&handle));
    CB(blas->setStream(handle, stream));
    blasWs = dmalloc(kBlasWorkspace);
    CB(blas->setWorkspace(handle, blasWs, kBlasWorkspace));

    // weight slots
    const size_t S = (size_t)KIND_COUNT * L;
    slotOffset.assign(S, 0);
    slotSize.assign(S, 0);
    slotFilled.assign(S, 0);
    const bool ln = !c.rmsnorm;  // LayerNorm weights have a bias
    auto def = [&](int kind, size_t elems, bool used) {
      if (!used) return;
      for (int l = 0; l < (isPerLayer(kind) ? L : 1); l++) slot(slotSize, kind, l) = elems * esz;
    };
    // a linear [rows, K]: T, or (quantized) int8 / packed int4 rows padded to 16 bytes + fp16 scales
    // The prefill scratch piece (default kScratchBytes; GLMTOOL_CUDA_QSCRATCH_MB=1..1024 for A/B
    // runs: smaller pieces stay in L2 between the dequantisation and the GEMM, larger ones give
    // the GEMM more columns at short prompts).
    size_t scratchCap = kScratchBytes;
    if (const char* v = std::getenv("GLMTOOL_CUDA_QSCRATCH_MB")) scratchCap = (size_t)std::min(1024, std::max(1, std::atoi(v))) << 20;
    auto defLinear = [&](int kind, int rows, int K) {
      if (!quantized()) return def(kind, (size_t)rows * K, true);
      qRows[kind] = rows, qK[kind] = K;
      qSrcRow[kind] = c.quantBits == 8 ? (size_t)K : (size_t)K / 2;
      qRowBytes[kind] = (qSrcRow[kind] + 15) / 16 * 16;
      const size_t groups = c.groupSize ? (size_t)K / c.groupSize : 1;
      for (int l = 0; l < L; l++) {
        slot(slotSize, kind, l) = (size_t)rows * qRowBytes[kind];
        slot(slotSize, scaleKind(kind), l) = (size_t)rows * groups * sizeof(half);
      }
      scratchBytes = std::max(scratchBytes, std::max(std::min((size_t)rows * K * esz, scratchCap), (size_t)16 * K * esz));
    };
    qRowsPerWarp = c.quantBits == 4 ? 2 : 1;
    if (const char* v = std::getenv("GLMTOOL_CUDA_QRPW")) qRowsPerWarp = std::atoi(v) == 2 ? 2 : 1;
    if (c.quantBits != 0 && c.quantBits != 4 && c.quantBits != 8)
      throw std::runtime_error("quantization bits must be 4 or 8, got " + std::to_string(c.quantBits));
    if (c.groupSize) {
      if (!quantized() || c.groupSize < 0 || c.groupSize % 32)
        throw std::runtime_error("quantization group size " + std::to_string(c.groupSize) + " is not supported (a multiple of 32)");
      for (int K : {H, attnDim, F})
        if (K % c.groupSize)
          throw std::runtime_error("quantization group size " + std::to_string(c.groupSize) + " does not divide the input width " +
                                   std::to_string(K));
    }
    defLinear(W_QKV, nqkv, H);
    def(B_QKV, nqkv, c.qkvBias);
    defLinear(W_DENSE, H, attnDim);
    def(B_DENSE, H, c.denseBias);
    defLinear(W_UP, fup, H);
    def(B_UP, fup, c.mlpBias);
    defLinear(W_DOWN, H, F);
    if (quantized()) {
      const char* v = std::getenv("GLMTOOL_CUDA_QMMA");
      qmma = c.dtype == 0 && !(v && std::string(v) == "0") && F % 16 == 0;
      qmmaTiles1 = !(v && std::string(v) == "2");
      for (int k : {W_QKV, W_DENSE, W_UP, W_DOWN})
        if (qRows[k] % 16 || qK[k] % 16 || qK[k] > QMMA_XMAX) qmma = false;
    }
    def(B_DOWN, H, c.mlpBias);
    def(W_LN1, H, true);
    def(B_LN1, H, ln);
    def(W_LN2, H, true);
    def(B_LN2, H, ln);
    def(W_FINAL, H, c.postLayerNorm);
    def(B_FINAL, H, ln && c.postLayerNorm);
    def(W_LMHEAD, (size_t)V * H, true);
    def(W_EMBED, (size_t)V * H, true);
    def(PREFIX_K, (size_t)G * P * D, P > 0);
    def(PREFIX_V, (size_t)G * P * D, P > 0);
    size_t arenaBytes = 0;
    for (int k = 0; k < KIND_COUNT; k++) {
      if (k == W_EMBED || k == PREFIX_K || k == PREFIX_V) continue;
      for (int l = 0; l < (isPerLayer(k) ? L : 1); l++) {
        slot(slotOffset, k, l) = arenaBytes;
        arenaBytes += (slot(slotSize, k, l) + 255) / 256 * 256;
      }
    }
    arena = static_cast<char*>(dmalloc(arenaBytes));
    // quantized rows are padded to 16 bytes: the padding must read as zero weights
    // (on the copy stream, so that every upload follows it)
    if (quantized()) CK(cudaMemsetAsync(arena, 0, arenaBytes, copyStream));
    const size_t embBytes = slot(slotSize, W_EMBED, 0);
    // Pinned and mapped (no GPU memory): the per-step path copies a row from it on the host,
    // decodeMany's gather kernel reads the row over PCIe itself.
    {
      void* h = nullptr;
      cudaError_t e = cudaHostAlloc(&h, std::max<size_t>(embBytes, 256), cudaHostAllocMapped);
      if (e != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error(std::string("cannot allocate the pinned host embedding table (") + std::to_string(embBytes >> 20) +
                                 " MiB): " + cudaGetErrorString(e));
      }
      hostEmbedding = static_cast<char*>(h);
      void* d = nullptr;
      CK(cudaHostGetDevicePointer(&d, h, 0));
      dEmbed = d;
    }
    if (P > 0) {
      prefixStage.assign(2 * L, nullptr);
      for (int l = 0; l < 2 * L; l++) prefixStage[l] = dmalloc((size_t)G * P * D * esz);
    }

    kvLayerBytes = (size_t)G * maxTotal * D * (kv8 ? 1 : esz);
    kv = static_cast<char*>(dmalloc(kvLayerBytes * 2 * L));
    if (kv8) {
      kvScale = static_cast<float*>(dmalloc((size_t)2 * L * G * maxTotal * sizeof(float)));
      kvStageBytes = (size_t)2 * G * maxTotal * D * esz;
      kvStage = dmalloc(kvStageBytes);
    }

    dec.x = dmalloc((size_t)H * esz);
    dec.lnA = dmalloc((size_t)H * esz);
    dec.lnB = dmalloc((size_t)H * esz);
    dec.qkv = dmalloc((size_t)nqkv * esz);
    dec.ctx = dmalloc((size_t)attnDim * esz);
    dec.tmp = dmalloc((size_t)H * esz);
    dec.up = dmalloc((size_t)fup * esz);
    dec.act = dmalloc((size_t)F * esz);
    const int parts = std::max(nsplit, gqaSplits);
    partO = static_cast<float*>(dmalloc((size_t)N * parts * D * sizeof(float)));
    partML = static_cast<float*>(dmalloc((size_t)N * parts * 2 * sizeof(float)));
    attnCounter = static_cast<unsigned*>(dmalloc((size_t)N * sizeof(unsigned)));
    CK(cudaMemset(attnCounter, 0, (size_t)N * sizeof(unsigned)));
    logits = static_cast<float*>(dmalloc((size_t)V * sizeof(float)));
    dToken = static_cast<int*>(dmalloc(sizeof(int)));

    // rotary frequencies, computed as src/formats/onnx/chatglm-graph.ts rotaryTables does:
    // theta_j = 1/base^(2j/rot) in float32 (rot = D/2; base 10000, ChatGLM3-6B-32k's 10000 *
    // rope_ratio); ChatGLM-6B rounds them to float16 as its published RotaryEmbedding does
    // (inv_freq.half(), roundInvFreqToHalf).
    const int rot = D / 2, nf = rot / 2;
    std::vector<float> th(nf);
    for (int j = 0; j < nf; j++) {
      const float e = (float)((2.0 * j) / rot);
      const float p = (float)std::pow(c.ropeBase, (double)e);
      float t = (float)(1.0 / (double)p);
      if (c.roundInvFreqToHalf) t = __half2float(__float2half_rn(t));
      th[j] = t;
    }
    invf = static_cast<float*>(dmalloc(nf * sizeof(float)));
    CK(cudaMemcpy(invf, th.data(), nf * sizeof(float), cudaMemcpyHostToDevice));

    dMeta = static_cast<char*>(dmalloc(sizeof(StepMeta) + 2 * sizeof(int) * kMaxChunk));
    CK(cudaMallocHost(&hMeta, sizeof(StepMeta) + 2 * sizeof(int) * kMaxChunk));
    CK(cudaMallocHost(&hRows, (size_t)std::min(kMaxChunk, c.maxLength) * H * esz));
    CK(cudaMallocHost(&hToken, sizeof(int)));
    for (int i = 0; i < 2; i++) {
      CK(cudaMallocHost(&staging[i], kStageBytes));
      CK(cudaEventCreateWithFlags(&stageEv[i], cudaEventDisableTiming));
    }
    sampleUsed();
  }

  void release() {
    dropGraph();
    if (stream) cudaStreamSynchronize(stream);
    if (copyStream) cudaStreamSynchronize(copyStream);
    for (auto& kvp : sizes) cudaFree(kvp.first);
    sizes.clear();
    allocated = 0;
    if (handle) blas->destroy(handle), handle = nullptr;
    for (int i = 0; i < 2; i++) {
      if (staging[i]) cudaFreeHost(staging[i]), staging[i] = nullptr;
      if (stageEv[i]) cudaEventDestroy(stageEv[i]), stageEv[i] = nullptr;
    }
    if (hMeta) cudaFreeHost(hMeta), hMeta = nullptr;
    if (hRows) cudaFreeHost(hRows), hRows = nullptr;
    if (hToken) cudaFreeHost(hToken), hToken = nullptr;
    if (hostEmbedding) cudaFreeHost(hostEmbedding), hostEmbedding = nullptr;
    dEmbed = nullptr;
    if (stream) cudaStreamDestroy(stream), stream = nullptr;
    if (copyStream) cudaStreamDestroy(copyStream), copyStream = nullptr;
  }

  // -- loading -----------------------------------------------------------------------------------
  void upload(int kind, int layer, size_t offset, const void* data, size_t bytes) {
    if (kind < 0 || kind >= KIND_COUNT) throw std::runtime_error("unknown weight kind " + std::to_string(kind));
    if (isPerLayer(kind) && (layer < 0 || layer >= L)) throw std::runtime_error("layer " + std::to_string(layer) + " out of range");
    const size_t size = uploadBytes(kind, layer);
    if (size == 0) throw std::runtime_error("weight kind " + std::to_string(kind) + " is not used by this model");
    if (offset + bytes > size)
      throw std::runtime_error("upload of " + std::to_string(bytes) + " bytes at " + std::to_string(offset) +
                               " overruns the slot's " + std::to_string(size) + " bytes");
    const char* src = static_cast<const char*>(data);
    slot(slotFilled, kind, layer) += bytes;
    if (kind == W_EMBED) {
      std::memcpy(hostEmbedding + offset, src, bytes);
      return;
    }
    if (quantized() && isQuantKind(kind) && qSrcRow[kind] != qRowBytes[kind]) {
      uploadPadded(kind, layer, offset, src, bytes);
      return;
    }
    char* dst = kind == PREFIX_K || kind == PREFIX_V ? static_cast<char*>(prefixStage[2 * layer + (kind == PREFIX_V)]) + offset
                                                      : arena + slot(slotOffset, kind, layer) + offset;
    while (bytes > 0) {
      const size_t piece = std::min(bytes, kStageBytes);
      const int s = nextStage;
      nextStage ^= 1;
      CK(cudaEventSynchronize(stageEv[s]));
      std::memcpy(staging[s], src, piece);
      CK(cudaMemcpyAsync(dst, staging[s], piece, cudaMemcpyHostToDevice, copyStream));
      CK(cudaEventRecord(stageEv[s], copyStream));
      src += piece, dst += piece, bytes -= piece;
    }
  }

  // A quantized weight whose rows are not a multiple of 16 bytes: `offset` / `bytes` count the
  // file's packed rows; each staging piece holds whole or partial rows at the engine's padded
  // stride, its padding zero (the arena was zeroed, and a piece never covers another's bytes).
  void uploadPadded(int kind, int layer, size_t offset, const char* src, size_t bytes) {
    const size_t sr = qSrcRow[kind], dr = qRowBytes[kind];
    char* base = arena + slot(slotOffset, kind, layer);
    while (bytes > 0) {
      const int s = nextStage;
      nextStage ^= 1;
      CK(cudaEventSynchronize(stageEv[s]));
      const size_t d0 = offset / sr * dr + offset % sr;  // engine byte of the piece's first file byte
      size_t used = 0;                                   // file bytes in this piece
      size_t span = 0;                                   // engine bytes it covers
      while (used < bytes) {
        const size_t o = offset + used;
        const size_t col = o % sr;
        const size_t d = o / sr * dr + col - d0;
        const size_t take = std::min(bytes - used, sr - col);
        const size_t pad = col + take == sr ? dr - sr : 0;
        if (d + take + pad > kStageBytes) break;
        std::memcpy(staging[s] + d, src + used, take);
        if (pad && used + take < bytes) std::memset(staging[s] + d + take, 0, pad);
        used += take;
        span = d + take;
      }
      if (used == 0) throw std::runtime_error("a quantized row is larger than the staging buffer");
      CK(cudaMemcpyAsync(base + d0, staging[s], span, cudaMemcpyHostToDevice, copyStream));
      CK(cudaEventRecord(stageEv[s], copyStream));
      offset += used, src += used, bytes -= used;
    }
  }

  void finishLoad() {
    CK(cudaStreamSynchronize(copyStream));
    for (int k = 0; k < KIND_COUNT; k++) {
      for (int l = 0; l < (isPerLayer(k) ? L : 1); l++) {
        const size_t want = uploadBytes(k, l);
        if (slot(slotFilled, k, l) != want) {
          throw std::runtime_error("weight kind " + std::to_string(k) + " layer " + std::to_string(l) + " got " +
                                   std::to_string(slot(slotFilled, k, l)) + " of " + std::to_string(want) +
                                   " bytes");
        }
      }
    }
    if (qmma) repackQuantized();
    if (P > 0 && kv8) {
      if (c.dtype == 0) quantizePrefix<half>();
      else quantizePrefix<__nv_bfloat16>();
    } else if (P > 0) {
      const size_t rowBytes = (size_t)P * D * esz;
      for (int l = 0; l < L; l++) {
        CK(cudaMemcpy2DAsync(Kc(l), (size_t)maxTotal * D * esz, prefixStage[2 * l], rowBytes, rowBytes, G,
                             cudaMemcpyDeviceToDevice, stream));
        CK(cudaMemcpy2DAsync(Vc(l), (size_t)maxTotal * D * esz, prefixStage[2 * l + 1], rowBytes, rowBytes, G,
                             cudaMemcpyDeviceToDevice, stream));
      }
    }
    if (P > 0) {
      CK(cudaStreamSynchronize(stream));
      for (void* p : prefixStage) dfree(p);
      prefixStage.clear();
    }
    loaded = true;
  }

  // INT8 KV cache: the prefix quantized into the cache's first P rows, as any other row.
  template <typename T>
  void quantizePrefix() {
    for (int l = 0; l < L; l++)
      launch(kv_quant_kernel<T>, dim3(P, G, 2), dim3(32), static_cast<const T*>(prefixStage[2 * l]), static_cast<const T*>(prefixStage[2 * l + 1]),
             (long long)D, (long long)P * D, kvq(l), maxTotal, 0, D);
  }

  // Every quantized linear from its uploaded row-major rows into gemv_mma.cuh's tiles, in place:
  // pieces of whole tiles are copied into the prefill scratch buffer (allocated here instead of
  // at the first prefill, so the peak is unchanged) and repacked back. A tile takes no more bytes
  // than its rows did and pieces go in order, so a piece's output never reaches rows not yet read.
  void repackQuantized() {
    scratch = ensureWork(scratchBytes);
    for (int k : {W_QKV, W_DENSE, W_UP, W_DOWN}) {
      const int rows = qRows[k], K = qK[k];
      const size_t rb = qRowBytes[k], tiledRow = c.quantBits == 8 ? (size_t)K : (size_t)K / 2;
      const int per = (int)(scratchBytes / rb / 16 * 16);
      if (per < 16) throw std::runtime_error("the prefill scratch buffer cannot hold one tile of 16 quantized rows");
      for (int l = 0; l < L; l++) {
        char* base = arena + slot(slotOffset, k, l);
        for (int r0 = 0; r0 < rows; r0 += per) {
          const int n = std::min(per, rows - r0);
          CK(cudaMemcpyAsync(scratch, base + (size_t)r0 * rb, (size_t)n * rb, cudaMemcpyDeviceToDevice, stream));
          const size_t words = (size_t)n * K / (c.quantBits == 8 ? 4 : 8);
          const int blocks = (int)std::min<size_t>((words + 255) / 256, 4096);
          uint8_t* dst = reinterpret_cast<uint8_t*>(base + (size_t)r0 * tiledRow);
          if (c.quantBits == 8)
            qtile_repack_kernel<WQ_I8><<<blocks, 256, 0, stream>>>(static_cast<const uint8_t*>(scratch), (int)rb, n, K, dst);
          else
            qtile_repack_kernel<WQ_I4><<<blocks, 256, 0, stream>>>(static_cast<const uint8_t*>(scratch), (int)rb, n, K, dst);
          CK(cudaGetLastError());
        }
      }
    }
    CK(cudaStreamSynchronize(stream));
  }

  // -- building blocks ---------------------------------------------------------------------------
  cudaDataType dt() const { return c.dtype == 0 ? CUDA_R_16F : CUDA_R_16BF; }

  void ensurePrefill(int S) {
    if (S <= preCap) return;
    const int cap = std::min(std::max(S, ((S + 127) / 128) * 128), std::min(kMaxChunk, c.maxLength));
    for (void* p : {pre.x, pre.lnA, pre.lnB, pre.qkv, pre.ctx, pre.tmp, pre.up, pre.act}) dfree(p);
    pre.x = dmalloc((size_t)cap * H * esz);
    pre.lnA = dmalloc((size_t)cap * H * esz);
    pre.lnB = dmalloc((size_t)cap * H * esz);
    pre.qkv = dmalloc((size_t)cap * nqkv * esz);
    pre.ctx = dmalloc((size_t)cap * attnDim * esz);
    pre.tmp = dmalloc((size_t)cap * H * esz);
    pre.up = dmalloc((size_t)cap * fup * esz);
    pre.act = c.swiglu ? dmalloc((size_t)cap * F * esz) : nullptr;
    preCap = cap;
    // quantized: the largest linear as T, one at a time (a fused int GEMM would need none)
    if (quantized()) scratch = ensureWork(scratchBytes);
  }

  template <typename T, int EPI, int RPW, int U, bool PF, bool NORM>
  void gemv2Launch(const void* W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc, const NormCtx& nc) {
    const int warps = (rows + RPW - 1) / RPW;
    const int blocks = (warps + GEMV2_THREADS / 32 - 1) / (GEMV2_THREADS / 32);
    launch(gemv2_kernel<T, EPI, RPW, U, PF, NORM>, dim3(blocks), dim3(GEMV2_THREADS), static_cast<const T*>(W),
           static_cast<const T*>(x), static_cast<const T*>(b), out, rows, K, F, rc, nc);
  }
  // The v2 GEMV: one output per warp, 8 loads per row per step (4 per row for SwiGLU / rotary
  // pairs), the next step prefetched. Measured against 2 outputs per warp and 16 loads without
  // prefetch (bench/RESULTS.md, 2026-11-28 run 3): 194.1 vs 184.3 / 188.8 tok/s (ChatGLM-6B).
  // NORM: x is the pre-norm row, normalised per block first (kernels.cuh NormCtx).
  // The two other shapes per call site (two outputs per warp for dense / down / QKV, 16 loads
  // without prefetch for up / lm_head, the fastest in stepbench on the H200) were slower in every
  // combination in `glmtool bench` (H200 run 6: 232.5-255.1 vs 257.7 tok/s ChatGLM-6B).
  // Quantized weights (W.q.scale set): the same kernel structure and epilogues over int8 / int4
  // loads (kernels.cuh gemvq_kernel), as many 16-byte loads in flight per row as the T GEMV for
  // int8 (16 weights each), half as many for int4 (32 weights each, so a 4096-wide row is one step).
  template <typename T, int EPI, bool NORM = false>
  void gemv2(const Wt& W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc,
             const NormCtx& nc = NormCtx{}) {
    constexpr bool pair = EPI == EPI_SWIGLU || EPI == EPI_ROPE;
    if (!W.q.scale) return gemv2Launch<T, EPI, 1, pair ? 4 : 8, true, NORM>(W.w, x, b, out, rows, K, rc, nc);
    if constexpr (EPI != EPI_F32 && std::is_same<T, half>::value) {
      if (qmma) return gemvmma<EPI, NORM>(W, x, b, out, rows, K, rc, nc);
    }
    if constexpr (EPI != EPI_F32) {
      const bool grouped = W.q.groups > 1;
      // single-row outputs: qRowsPerWarp rows per warp share each x load's conversion (pairs always do)
      const bool two = !pair && qRowsPerWarp == 2;
      if (c.quantBits == 8) {
        if (two) {
          if (grouped) gemvqLaunch<T, EPI, 2, 4, NORM, WQ_I8, true>(W, x, b, out, rows, K, rc, nc);
          else gemvqLaunch<T, EPI, 2, 4, NORM, WQ_I8, false>(W, x, b, out, rows, K, rc, nc);
        } else {
          if (grouped) gemvqLaunch<T, EPI, 1, pair ? 4 : 8, NORM, WQ_I8, true>(W, x, b, out, rows, K, rc, nc);
          else gemvqLaunch<T, EPI, 1, pair ? 4 : 8, NORM, WQ_I8, false>(W, x, b, out, rows, K, rc, nc);
        }
      } else {
        if (two) {
          if (grouped) gemvqLaunch<T, EPI, 2, 2, NORM, WQ_I4, true>(W, x, b, out, rows, K, rc, nc);
          else gemvqLaunch<T, EPI, 2, 2, NORM, WQ_I4, false>(W, x, b, out, rows, K, rc, nc);
        } else {
          if (grouped) gemvqLaunch<T, EPI, 1, pair ? 2 : 4, NORM, WQ_I4, true>(W, x, b, out, rows, K, rc, nc);
          else gemvqLaunch<T, EPI, 1, pair ? 2 : 4, NORM, WQ_I4, false>(W, x, b, out, rows, K, rc, nc);
        }
      }
    } else {
      throw std::runtime_error("the output layer is not quantized in the engine");
    }
  }
  // The tensor-core GEMV (gemv_mma.cuh): 16-row tiles, 8 warps a block over TILES tiles and
  // 8 / TILES slices of K. One tile a block for single-row outputs (most blocks, every slice a
  // short run of loads), two for SwiGLU (rows j and F + j), four for 2D rotary (whole pairs).
  template <int EPI, bool NORM>
  void gemvmma(const Wt& W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc, const NormCtx& nc) {
    const bool grouped = W.q.groups > 1;
    if (c.quantBits == 8) {
      if (grouped) gemvmmaPick<EPI, NORM, WQ_I8, true>(W, x, b, out, rows, K, rc, nc);
      else gemvmmaPick<EPI, NORM, WQ_I8, false>(W, x, b, out, rows, K, rc, nc);
    } else {
      if (grouped) gemvmmaPick<EPI, NORM, WQ_I4, true>(W, x, b, out, rows, K, rc, nc);
      else gemvmmaPick<EPI, NORM, WQ_I4, false>(W, x, b, out, rows, K, rc, nc);
    }
  }
  template <int EPI, bool NORM, int WQ, bool GROUPED>
  void gemvmmaPick(const Wt& W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc, const NormCtx& nc) {
    if constexpr (EPI == EPI_SWIGLU) {
      gemvmmaLaunch<EPI, 2, NORM, WQ, GROUPED>(W, x, b, out, rows, K, rc, nc);
    } else {
      if (EPI == EPI_ROPE && c.rotary2d) gemvmmaLaunch<EPI, 4, NORM, WQ, GROUPED>(W, x, b, out, rows, K, rc, nc);
      else if (qmmaTiles1) gemvmmaLaunch<EPI, 1, NORM, WQ, GROUPED>(W, x, b, out, rows, K, rc, nc);
      else gemvmmaLaunch<EPI, 2, NORM, WQ, GROUPED>(W, x, b, out, rows, K, rc, nc);
    }
  }
  template <int EPI, int TILES, bool NORM, int WQ, bool GROUPED>
  void gemvmmaLaunch(const Wt& W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc, const NormCtx& nc) {
    const int perBlock = EPI == EPI_SWIGLU ? 8 * TILES : 16 * TILES;
    const int units = EPI == EPI_SWIGLU ? F : EPI == EPI_ROPE ? 2 * rows : rows;
    const int blocks = (units + perBlock - 1) / perBlock;
    launch(gemvmma_kernel<half, EPI, TILES, 4, NORM, WQ, GROUPED>, dim3(blocks), dim3(QMMA_THREADS),
           static_cast<const uint8_t*>(W.w), static_cast<const half*>(x), static_cast<const half*>(b), out, rows, K, F, rc, nc, W.q);
  }
  template <typename T, int EPI, int RPW, int U, bool NORM, int WQ, bool GROUPED>
  void gemvqLaunch(const Wt& W, const void* x, const void* b, void* out, int rows, int K, const RopeCtx& rc, const NormCtx& nc) {
    const int warps = (rows + RPW - 1) / RPW;
    const int blocks = (warps + GEMV2_THREADS / 32 - 1) / (GEMV2_THREADS / 32);
    launch(gemvq_kernel<T, EPI, RPW, U, true, NORM, WQ, GROUPED>, dim3(blocks), dim3(GEMV2_THREADS), W.w, static_cast<const T*>(x),
           static_cast<const T*>(b), out, rows, K, F, rc, nc, W.q);
  }
  // Prefill with a quantized weight: y[S, Nout] = x W^T in pieces of rows, each dequantized into
  // the scratch buffer (as T) and multiplied by cuBLAS into its columns of y. (Dequantising piece
  // i + 1 on a second stream during piece i's GEMM measured slower: TTFT 24.1 vs 21.8 ms, H200,
  // bench/RESULTS.md 2026-12-06.)
  template <typename T>
  void gemmQuant(const Wt& W, const void* x, void* y, int S, int Nout, int K) {
    const int per = (int)std::max<size_t>(16, scratchBytes / ((size_t)K * esz) / 16 * 16);
    const float one = 1.f, zero = 0.f;
    T* buf = static_cast<T*>(scratch);
    for (int r0 = 0; r0 < Nout; r0 += per) {
      const int n = std::min(per, Nout - r0);
      QuantCtx q = W.q;
      q.scale += (size_t)r0 * q.groups;
      const size_t total = (size_t)n * (K / 8);
      const int blocks = (int)std::min<size_t>((total + 255) / 256, 132 * 16);
      const uint8_t* w8 = static_cast<const uint8_t*>(W.w);
      if (qmma) {  // tiled: the rows r0.. start at tile r0 / 16 (per is a multiple of 16)
        const uint8_t* wt = w8 + (size_t)r0 * (c.quantBits == 8 ? K : K / 2);
        if (c.quantBits == 8) launch(dequant_tiled_kernel<T, WQ_I8>, dq_grid<WQ_I8>(n, K), dim3(256), wt, q, c.groupSize, K, buf);
        else launch(dequant_tiled_kernel<T, WQ_I4>, dq_grid<WQ_I4>(n, K), dim3(256), wt, q, c.groupSize, K, buf);
      } else {
        const uint8_t* wr = w8 + (size_t)r0 * q.rowBytes;
        if (c.quantBits == 8) launch(dequant_kernel<T, WQ_I8>, dim3(blocks), dim3(256), wr, q, c.groupSize, n, K, buf);
        else launch(dequant_kernel<T, WQ_I4>, dim3(blocks), dim3(256), wr, q, c.groupSize, n, K, buf);
      }
      CB(blas->gemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, S, K, &one, buf, dt(), K, x, dt(), K, &zero,
                      static_cast<char*>(y) + (size_t)r0 * esz, dt(), Nout, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
  // The norm of the decode step's QKV (slot W_LN1) or up (W_LN2) GEMV, fused into it; normOut
  // receives the normalised row (a post-norm residual's next residual).
  NormCtx normCtx(int wkind, int layer, void* normOut) {
    NormCtx nc{};
    nc.rms = c.rmsnorm;
    nc.alpha = alpha;
    nc.w = w(wkind, layer);
    nc.b = w(wkind + 1, layer);
    nc.normOut = normOut;
    nc.eps = c.eps;
    return nc;
  }
  NormCtx resCtx(const void* res) {
    NormCtx nc{};
    nc.rms = c.rmsnorm;
    nc.alpha = alpha;
    nc.res = res;
    return nc;
  }

  template <typename T>
  void gemv(int epi, const Wt& W, const void* x, const void* b, void* out, int rows, int K) {
    const RopeCtx rc{};
    switch (epi) {
      case EPI_NONE: gemv2<T, EPI_NONE>(W, x, b, out, rows, K, rc); break;
      case EPI_GELU: gemv2<T, EPI_GELU>(W, x, b, out, rows, K, rc); break;
      case EPI_SWIGLU: gemv2<T, EPI_SWIGLU>(W, x, b, out, rows, K, rc); break;
      default: gemv2<T, EPI_F32>(W, x, b, out, rows, K, rc); break;
    }
  }

  // y[S, Nout] = x[S, K] W^T (+ b), W [Nout, K] row-major: column-major Y^T = W^T-op x^T.
  void gemm(const void* W, const void* x, void* y, int S, int Nout, int K, bool f32out) {
    const float one = 1.f, zero = 0.f;
    CB(blas->gemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, Nout, S, K, &one, W, dt(), K, x, dt(), K, &zero, y,
                    f32out ? CUDA_R_32F : dt(), Nout, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // A linear layer of S rows; epi: EPI_NONE (+bias), EPI_GELU (gelu(+bias), out = up buffer),
  // EPI_SWIGLU (out = act [S, F], `up` holds the [S, 2F] product on the GEMM path).
  template <typename T>
  void linear(int S, int epi, const Wt& W, const void* b, const void* x, void* out, void* up, int Nout, int K) {
    if (S == 1) {
      gemv<T>(epi, W, x, b, out, epi == EPI_SWIGLU ? F : Nout, K);
      return;
    }
    void* y = epi == EPI_SWIGLU ? up : out;
    if (W.q.scale) gemmQuant<T>(W, x, y, S, Nout, K);
    else gemm(W.w, x, y, S, Nout, K, false);
    if (!b && epi == EPI_NONE) return;
    const size_t total = (size_t)S * (epi == EPI_SWIGLU ? F : Nout);
    const int blocks = (int)std::min<size_t>((total + 255) / 256, 65535);
    T* yt = static_cast<T*>(y);
    const T* bt = static_cast<const T*>(b);
    switch (epi) {
      case EPI_NONE: launch(bias_act_kernel<T, EPI_NONE>, dim3(blocks), dim3(256), yt, bt, (T*)nullptr, S, Nout, F); break;
      case EPI_GELU: launch(bias_act_kernel<T, EPI_GELU>, dim3(blocks), dim3(256), yt, bt, (T*)nullptr, S, Nout, F); break;
      default: launch(bias_act_kernel<T, EPI_SWIGLU>, dim3(blocks), dim3(256), yt, bt, static_cast<T*>(out), S, Nout, F); break;
    }
  }

  template <typename T>
  void norm(int S, const void* a, void* res, void* out, const void* wt, const void* bs) {
    int threads = (H + NORM_PER_THREAD - 1) / NORM_PER_THREAD;
    threads = std::min(1024, std::max(32, (threads + 31) / 32 * 32));
    if (!c.rmsnorm) {
      launch(add_norm_kernel<T, false>, dim3(S), dim3(threads), static_cast<const T*>(a), static_cast<T*>(res), static_cast<T*>(out),
             static_cast<const T*>(wt), static_cast<const T*>(bs), alpha, H, c.eps);
    } else {
      launch(add_norm_kernel<T, true>, dim3(S), dim3(threads), static_cast<const T*>(a), static_cast<T*>(res), static_cast<T*>(out),
             static_cast<const T*>(wt), static_cast<const T*>(bs), 1.f, H, c.eps);
    }
  }

  void ensureScores(size_t bytes) { scores = ensureWork(bytes); }
  // The prefill attention's scores and the quantized linears' dequantisation buffer are one
  // allocation (never in use at once: both are used by kernels in order on the one stream), sized
  // for the larger; growing it (cudaFree waits for the device) moves both.
  void* ensureWork(size_t bytes) {
    if (bytes > workCap) {
      dfree(work);
      work = dmalloc(bytes);
      workCap = bytes;
      if (scores) scores = work;
      if (scratch) scratch = work;
    }
    return work;
  }

  template <typename T, int DH, int MT>
  void flashLaunch(const FlashArgs<T>& a) {
    constexpr size_t smem = flashSmemBytes<DH, MT>();
    constexpr int rows = flashRows<MT>();
    static bool sized = false;  // per instantiation: above 48 KiB needs the opt-in, once
    if (!sized) {
      CK(cudaFuncSetAttribute(flash_prefill_kernel<T, DH, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      sized = true;
    }
    launchSmem(flash_prefill_kernel<T, DH, MT>, dim3((a.S + rows - 1) / rows, N), dim3(FA_THREADS), smem, a);
  }
  template <typename T, int DH>
  void flashLaunch(const FlashArgs<T>& a) { flash == 2 ? flashLaunch<T, DH, 2>(a) : flashLaunch<T, DH, 1>(a); }

  template <typename T>
  void attentionPrefill(int layer, int S, int past, int bidirectional, const void* qkv, void* ctx) {
    const int Tc = P + past + S;
    if (flash) {
      FlashArgs<T> a{};
      a.q = static_cast<const T*>(qkv);
      a.qStride = nqkv;
      a.qHeadStride = c.interleavedQkv ? 3 * D : D;
      a.k = reinterpret_cast<const T*>(Kc(layer));
      a.v = reinterpret_cast<const T*>(Vc(layer));
      a.kvHeadStride = (long long)maxTotal * D;
      if (kv8) {  // every visible row from the INT8 cache, as the decode attention sees it
        T* st = static_cast<T*>(kvStage);
        const size_t items = (size_t)2 * G * Tc * (D / 8);
        launch(kv_dequant_kernel<T>, dim3((unsigned)std::min<size_t>((items + 255) / 256, 4096)), dim3(256), kvq(layer), G, maxTotal, Tc, D, st);
        a.k = st, a.v = st + (size_t)G * Tc * D, a.kvHeadStride = (long long)Tc * D;
      }
      a.headsPerGroup = N / G;
      a.out = static_cast<T*>(ctx);
      a.outStride = attnDim;
      a.S = S, a.Tc = Tc, a.past = past, a.prefix = P, a.bidirectional = bidirectional;
      a.scaleLog2 = 1.4426950408889634f / std::sqrt((float)D);
      switch (D) {
        case 16: flashLaunch<T, 16>(a); break;
        case 32: flashLaunch<T, 32>(a); break;
        case 64: flashLaunch<T, 64>(a); break;
        default: flashLaunch<T, 128>(a); break;
      }
      return;
    }
    const size_t perRow = (size_t)N * Tc * (sizeof(float) + esz);
    const int Sc = (int)std::max<size_t>(1, std::min<size_t>(S, kScoresBudget / perRow));
    ensureScores(perRow * Sc);
    float* sc = static_cast<float*>(scores);
    T* pr = reinterpret_cast<T*>(sc + (size_t)N * Sc * Tc);
    const float scale = 1.f / std::sqrt((float)D), one = 1.f, zero = 0.f;
    const T* q = static_cast<const T*>(qkv);
    const T* K = reinterpret_cast<const T*>(Kc(layer));
    const T* Vv = reinterpret_cast<const T*>(Vc(layer));
    long long cacheStride = (long long)maxTotal * D;
    if (kv8) {  // every visible row from the INT8 cache, as the decode attention sees it
      T* st = static_cast<T*>(kvStage);
      const size_t items = (size_t)2 * G * Tc * (D / 8);
      launch(kv_dequant_kernel<T>, dim3((unsigned)std::min<size_t>((items + 255) / 256, 4096)), dim3(256), kvq(layer), G, maxTotal, Tc, D, st);
      K = st, Vv = st + (size_t)G * Tc * D, cacheStride = (long long)Tc * D;
    }
    T* out = static_cast<T*>(ctx);
    const int gs = N / G;
    for (int s0 = 0; s0 < S; s0 += Sc) {
      const int n = std::min(Sc, S - s0);
      const long long rowStride = (long long)n * Tc;
      // scores[h][r][t] = q_h(s0 + r) . k_h(t) / sqrt(D)
      if (c.interleavedQkv) {  // one K/V head per query head, q of head h at h * 3D
        CB(blas->gemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, Tc, n, D, &scale, K, dt(), D, cacheStride,
                                      q + (size_t)s0 * nqkv, dt(), nqkv, 3LL * D, &zero, sc, CUDA_R_32F, Tc, rowStride, N,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      } else {
        for (int g = 0; g < G; g++) {
          CB(blas->gemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, Tc, n, D, &scale, K + g * cacheStride, dt(), D, 0,
                                        q + (size_t)s0 * nqkv + (size_t)g * gs * D, dt(), nqkv, D, &zero,
                                        sc + (size_t)g * gs * rowStride, CUDA_R_32F, Tc, rowStride, gs, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
        }
      }
      launch(softmax_mask_kernel<T>, dim3(n, N), dim3(256), (const float*)sc, pr, n, Tc, s0, past, P, bidirectional);
      // ctx[s0 + r][h*D + d] = sum_t probs[h][r][t] v_h(t)[d]
      if (c.interleavedQkv) {
        CB(blas->gemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, D, n, Tc, &one, Vv, dt(), D, cacheStride, pr, dt(), Tc,
                                      rowStride, &zero, out + (size_t)s0 * attnDim, dt(), attnDim, D, N, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
      } else {
        for (int g = 0; g < G; g++) {
          CB(blas->gemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, D, n, Tc, &one, Vv + g * cacheStride, dt(), D, 0,
                                        pr + (size_t)g * gs * rowStride, dt(), Tc, rowStride, &zero,
                                        out + (size_t)s0 * attnDim + (size_t)g * gs * D, dt(), attnDim, D, gs,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
      }
    }
  }

  template <typename T>
  void attentionDecode(int layer, const void* qkv, void* ctx) {
    const float scale = 1.f / std::sqrt((float)D);
    if (attnMode == 2) {
      const T* K = kv8 ? nullptr : reinterpret_cast<const T*>(Kc(layer));
      const T* Vv = kv8 ? nullptr : reinterpret_cast<const T*>(Vc(layer));
      launch(kv8 ? attn_decode_gqa_kernel<T, true> : attn_decode_gqa_kernel<T, false>, dim3(N / gqaHeads, gqaSplits), dim3(DA_THREADS),
             static_cast<const T*>(qkv), K, Vv, kvq(layer), reinterpret_cast<const StepMeta*>(dMeta), geom, scale, gqaTile, gqaHeads, partO,
             partML, attnCounter, static_cast<T*>(ctx));
      return;
    }
    launch(attn_decode2_kernel<T>, dim3(N, nsplit), dim3(128), static_cast<const T*>(qkv), reinterpret_cast<const T*>(Kc(layer)),
           reinterpret_cast<const T*>(Vc(layer)), reinterpret_cast<const StepMeta*>(dMeta), geom, scale, partO, partML,
           attnCounter, static_cast<T*>(ctx));
  }

  // The decode step's decoder with the norms fused into the GEMVs (fuseNorm): the attention
  // output and down projections add the residual in their epilogue (pre-norm: into x in place;
  // post-norm: alpha * the previous norm output, into tmp), the QKV and up projections normalise
  // that row themselves (post-norm: block 0 keeps the normalised row in lnA / lnB, the next
  // residual). Only the final norm stays a kernel. Same arithmetic as layers(), bit for bit.
  template <typename T>
  void layersFusedNorm(const Bufs& b) {
    void* v = post ? b.tmp : b.x;  // the pre-norm row after each residual add
    pdl = false;  // the first kernel follows the step's host-to-device copies / the embedding gather
    for (int l = 0; l < L; l++) {
      const RopeCtx rc = ropeCtx(l);
      gemv2<T, EPI_ROPE, true>(wt(W_QKV, l), l == 0 ? b.x : v, w(B_QKV, l), b.qkv, nqkv / 2, H, rc,
                               normCtx(W_LN1, l, post ? b.lnA : nullptr));
      pdl = pdlSupported && usePdl;
      attentionDecode<T>(l, b.qkv, b.ctx);
      gemv2<T, EPI_RES>(wt(W_DENSE, l), b.ctx, w(B_DENSE, l), v, H, attnDim, RopeCtx{}, resCtx(post ? b.lnA : b.x));
      if (c.swiglu) {
        gemv2<T, EPI_SWIGLU, true>(wt(W_UP, l), v, w(B_UP, l), b.act, F, H, RopeCtx{}, normCtx(W_LN2, l, post ? b.lnB : nullptr));
        gemv2<T, EPI_RES>(wt(W_DOWN, l), b.act, w(B_DOWN, l), v, H, F, RopeCtx{}, resCtx(post ? b.lnB : b.x));
      } else {
        gemv2<T, EPI_GELU, true>(wt(W_UP, l), v, w(B_UP, l), b.up, fup, H, RopeCtx{}, normCtx(W_LN2, l, post ? b.lnB : nullptr));
        gemv2<T, EPI_RES>(wt(W_DOWN, l), b.up, w(B_DOWN, l), v, H, F, RopeCtx{}, resCtx(post ? b.lnB : b.x));
      }
    }
    norm<T>(1, nullptr, v, b.lnA, w(W_FINAL, 0), w(B_FINAL, 0));
  }

  // The decoder over S rows of `b` (x holds the embeddings); leaves the final normed rows in b.lnA.
  // S == 1 uses only kernels that read the step's values from device memory (graph-capturable).
  template <typename T>
  void layers(const Bufs& b, int S, int past, int bidirectional) {
    if (S == 1 && fuseNorm) {
      layersFusedNorm<T>(b);
      return;
    }
    norm<T>(S, nullptr, b.x, b.lnA, w(W_LN1, 0), w(B_LN1, 0));
    // the first kernel follows the step's host-to-device copies; the rest follow kernels
    pdl = S == 1 && pdlSupported && usePdl;
    for (int l = 0; l < L; l++) {
      if (S == 1) {
        // QKV projection, rotary and the KV-cache write in one kernel
        gemv2<T, EPI_ROPE>(wt(W_QKV, l), b.lnA, w(B_QKV, l), b.qkv, nqkv / 2, H, ropeCtx(l));
      } else {
        linear<T>(S, EPI_NONE, wt(W_QKV, l), w(B_QKV, l), b.lnA, b.qkv, nullptr, nqkv, H);
        launch(rotary_cache_kernel<T>, dim3(S), dim3(128), static_cast<T*>(b.qkv), kv8 ? nullptr : reinterpret_cast<T*>(Kc(l)),
               kv8 ? nullptr : reinterpret_cast<T*>(Vc(l)), reinterpret_cast<const StepMeta*>(dMeta), (const float*)invf, geom);
        if (kv8) {  // the new rows into the INT8 cache
          const T* qk = static_cast<const T*>(b.qkv);
          const long long gstride = c.interleavedQkv ? 3LL * D : D;
          launch(kv_quant_kernel<T>, dim3(S, G, 2), dim3(32), qk + geom.kOff(0), qk + geom.vOff(0), (long long)nqkv, gstride, kvq(l),
                 maxTotal, P + past, D);
        }
      }
      if (S == 1) attentionDecode<T>(l, b.qkv, b.ctx);
      else attentionPrefill<T>(l, S, past, bidirectional, b.qkv, b.ctx);
      linear<T>(S, EPI_NONE, wt(W_DENSE, l), w(B_DENSE, l), b.ctx, b.tmp, nullptr, H, attnDim);
      // post-norm: lnB = LN2(alpha * lnA + attn); pre-norm: x += attn, lnB = RMS2(x)
      norm<T>(S, b.tmp, post ? b.lnA : b.x, b.lnB, w(W_LN2, l), w(B_LN2, l));
      if (c.swiglu) {
        linear<T>(S, EPI_SWIGLU, wt(W_UP, l), w(B_UP, l), b.lnB, b.act, b.up, fup, H);
        linear<T>(S, EPI_NONE, wt(W_DOWN, l), w(B_DOWN, l), b.act, b.tmp, nullptr, H, F);
      } else {
        linear<T>(S, EPI_GELU, wt(W_UP, l), w(B_UP, l), b.lnB, b.up, b.up, fup, H);
        linear<T>(S, EPI_NONE, wt(W_DOWN, l), w(B_DOWN, l), b.up, b.tmp, nullptr, H, F);
      }
      // the next layer's input norm, or the final one after the last layer
      const bool last = l + 1 == L;
      const void* nw = last ? w(W_FINAL, 0) : w(W_LN1, l + 1);
      const void* nb = last ? w(B_FINAL, 0) : w(B_LN1, l + 1);
      norm<T>(S, b.tmp, post ? b.lnB : b.x, b.lnA, nw, nb);
    }
  }

  template <typename T>
  void enqueueDecode() {
    CK(cudaMemcpyAsync(dMeta, hMeta, sizeof(StepMeta) + 2 * sizeof(int), cudaMemcpyHostToDevice, stream));
    CK(cudaMemcpyAsync(dec.x, hRows, (size_t)H * esz, cudaMemcpyHostToDevice, stream));
    layers<T>(dec, 1, 0, 0);
    gemv<T>(EPI_F32, wt(W_LMHEAD, 0), dec.lnA, nullptr, logits, V, H);
    launch(sample_kernel, dim3(1), dim3(1024), (const float*)logits, V, reinterpret_cast<const StepMeta*>(dMeta), dToken);
    pdl = false;
    CK(cudaMemcpyAsync(hToken, dToken, sizeof(int), cudaMemcpyDeviceToHost, stream));
  }

  // One decodeMany step: everything on the GPU, the input token from the previous step's sampling.
  template <typename T>
  void enqueueManyStep() {
    pdl = false;
    launch(embed_gather_kernel<T>, dim3(1), dim3(256), static_cast<const T*>(dEmbed), (const int*)dToken, V, static_cast<T*>(dec.x), H);
    layers<T>(dec, 1, 0, 0);
    gemv<T>(EPI_F32, wt(W_LMHEAD, 0), dec.lnA, nullptr, logits, V, H);
    launch(sample_kernel, dim3(1), dim3(1024), (const float*)logits, V, reinterpret_cast<const StepMeta*>(dMeta), dToken);
    pdl = false;
    launch(decode_advance_kernel, dim3(1), dim3(32), reinterpret_cast<StepMeta*>(dMeta), (const int*)dToken);
  }

  template <typename T>
  void decodeManyT(int firstId, const int32_t* positions, const int32_t* blocks, int n, int past, int bidirectional,
                   const Sampling& sampling, const float* randoms, int32_t* out) {
    if (!loaded) throw std::runtime_error("decodeMany before the weights finished loading");
    if (n < 1 || n > MANY_MAX) throw std::runtime_error("decodeMany takes 1.." + std::to_string(MANY_MAX) + " steps, got " + std::to_string(n));
    if (past < 0 || past + n > c.maxLength)
      throw std::runtime_error(std::to_string(past) + " cached + " + std::to_string(n) + " new tokens exceed the maximum length " +
                               std::to_string(c.maxLength));
    if (firstId < 0 || firstId >= V) throw std::runtime_error("token id " + std::to_string(firstId) + " outside the vocabulary");
    StepMeta* m = reinterpret_cast<StepMeta*>(hMeta);
    std::memset(m, 0, sizeof(StepMeta));
    m->past = past;
    m->S = 1;
    m->bidirectional = bidirectional;
    m->greedy = sampling.greedy;
    m->topK = sampling.topK;
    m->vocabLimit = sampling.vocabLimit;
    m->temperature = sampling.temperature;
    m->topP = sampling.topP;
    m->random = randoms ? randoms[0] : 0.f;
    m->step = 0;
    int* pb = reinterpret_cast<int*>(m + 1);
    int* plan = manyPlan(pb);
    float* rnd = manyRandom(pb);
    for (int i = 0; i < MANY_MAX; i++) {
      const int k = std::min(i, n - 1);
      plan[2 * i] = positions[k];
      plan[2 * i + 1] = blocks ? blocks[k] : 0;
      rnd[i] = randoms ? randoms[k] : 0.f;
    }
    pb[0] = plan[0];
    pb[1] = plan[1];
    *hToken = firstId;
    const size_t metaBytes = sizeof(StepMeta) + (size_t)(2 + 3 * MANY_MAX) * sizeof(int);
    CK(cudaMemcpyAsync(dMeta, hMeta, metaBytes, cudaMemcpyHostToDevice, stream));
    CK(cudaMemcpyAsync(dToken, hToken, sizeof(int), cudaMemcpyHostToDevice, stream));
    runStep(graphMany, graphManyExec, n, [&] { enqueueManyStep<T>(); });
    // the tokens the steps chose follow the plan (manyTokens())
    CK(cudaMemcpyAsync(hMeta + metaBytes, dMeta + metaBytes, (size_t)n * sizeof(int), cudaMemcpyDeviceToHost, stream));
    CK(cudaStreamSynchronize(stream));
    std::memcpy(out, hMeta + metaBytes, (size_t)n * sizeof(int));
  }

  // Runs a decode step's launches `times` times: plainly (useGraph off), or captured into g / ge
  // on first use and replayed. A failed enqueue leaves PDL off and no half-captured graph.
  template <typename F>
  void runStep(cudaGraph_t& g, cudaGraphExec_t& ge, int times, F enqueue) {
    if (!c.useGraph) {
      try {
        for (int i = 0; i < times; i++) enqueue();
      } catch (...) {
        pdl = false;
        throw;
      }
      return;
    }
    if (!ge) {
      CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue();
      } catch (...) {
        pdl = false;
        cudaGraph_t failed = nullptr;
        cudaStreamEndCapture(stream, &failed);
        if (failed) cudaGraphDestroy(failed);
        cudaGetLastError();
        throw;
      }
      CK(cudaStreamEndCapture(stream, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
    }
    for (int i = 0; i < times; i++) CK(cudaGraphLaunch(ge, stream));
  }

  template <typename T>
  void decode() {
    runStep(graph, graphExec, 1, [&] { enqueueDecode<T>(); });
  }


  template <typename T>
  int forwardT(const int32_t* ids, const int32_t* positions, const int32_t* blocks, int S, int past, int bidirectional,
               int logitsMode, float* out, const Sampling* sampling) {
    if (!loaded) throw std::runtime_error("forward before the weights finished loading");
    if (S < 1 || S > std::min(kMaxChunk, c.maxLength)) throw std::runtime_error("forward takes 1.." + std::to_string(std::min(kMaxChunk, c.maxLength)) + " tokens, got " + std::to_string(S));
    if (past < 0 || past + S > c.maxLength)
      throw std::runtime_error(std::to_string(past) + " cached + " + std::to_string(S) + " new tokens exceed the maximum length " +
                               std::to_string(c.maxLength));
    StepMeta* m = reinterpret_cast<StepMeta*>(hMeta);
    std::memset(m, 0, sizeof(StepMeta));
    m->past = past;
    m->S = S;
    m->bidirectional = bidirectional;
    m->greedy = sampling ? sampling->greedy : 1;
    m->topK = sampling ? sampling->topK : 0;
    m->vocabLimit = sampling ? sampling->vocabLimit : 0;
    m->temperature = sampling ? sampling->temperature : 1.f;
    m->topP = sampling ? sampling->topP : 1.f;
    m->random = sampling ? sampling->random : 0.f;
    int* pb = reinterpret_cast<int*>(m + 1);
    const size_t rowBytes = (size_t)H * esz;
    for (int s = 0; s < S; s++) {
      if (ids[s] < 0 || ids[s] >= V) throw std::runtime_error("token id " + std::to_string(ids[s]) + " outside the vocabulary");
      pb[2 * s] = positions[s];
      pb[2 * s + 1] = blocks ? blocks[s] : 0;
      std::memcpy(hRows + s * rowBytes, hostEmbedding + (size_t)ids[s] * rowBytes, rowBytes);
    }
    if (S == 1) {
      decode<T>();
      CK(cudaStreamSynchronize(stream));
      if (logitsMode) CK(cudaMemcpy(out, logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost));
      return *hToken;
    }
    ensurePrefill(S);
    CK(cudaMemcpyAsync(dMeta, hMeta, sizeof(StepMeta) + 2 * sizeof(int) * S, cudaMemcpyHostToDevice, stream));
    CK(cudaMemcpyAsync(pre.x, hRows, (size_t)S * rowBytes, cudaMemcpyHostToDevice, stream));
    layers<T>(pre, S, past, bidirectional);
    const char* lastRow = static_cast<const char*>(pre.lnA) + (size_t)(S - 1) * rowBytes;
    gemv<T>(EPI_F32, wt(W_LMHEAD, 0), lastRow, nullptr, logits, V, H);
    launch(sample_kernel, dim3(1), dim3(1024), (const float*)logits, V, reinterpret_cast<const StepMeta*>(dMeta), dToken);
    CK(cudaMemcpyAsync(hToken, dToken, sizeof(int), cudaMemcpyDeviceToHost, stream));
    if (logitsMode == 1) {
      CK(cudaMemcpyAsync(out, logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, stream));
    } else if (logitsMode == 2) {
      const size_t rows = std::max<size_t>(1, std::min<size_t>(S, kLogitsChunkBytes / ((size_t)V * sizeof(float))));
      if (rows > logitsAllRows) {
        dfree(logitsAll);
        logitsAll = static_cast<float*>(dmalloc(rows * V * sizeof(float)));
        logitsAllRows = rows;
      }
      for (int r0 = 0; r0 < S; r0 += (int)rows) {
        const int n = std::min<int>((int)rows, S - r0);
        gemm(w(W_LMHEAD, 0), static_cast<const char*>(pre.lnA) + (size_t)r0 * rowBytes, logitsAll, n, V, H, true);
        CK(cudaMemcpyAsync(out + (size_t)r0 * V, logitsAll, (size_t)n * V * sizeof(float), cudaMemcpyDeviceToHost, stream));
        CK(cudaStreamSynchronize(stream));
      }
    }
    CK(cudaStreamSynchronize(stream));
    sampleUsed();
    return *hToken;
  }
};

Engine::Engine(const EngineConfig& cfg) {
  impl_ = new Impl(cfg);
  try {
    impl_->init();
  } catch (...) {
    impl_->release();
    delete impl_;
    impl_ = nullptr;
    throw;
  }
}

Engine::~Engine() { dispose(); }

void Engine::dispose() {
  if (!impl_) return;
  impl_->release();
  delete impl_;
  impl_ = nullptr;
}

static Engine::Impl* need(Engine::Impl* p) {
  if (!p) throw std::runtime_error("the engine was disposed");
  return p;
}

size_t Engine::slotBytes(int kind, int layer) const {
  Impl* p = need(impl_);
  if (kind < 0 || kind >= KIND_COUNT) return 0;
  if (isPerLayer(kind) && (layer < 0 || layer >= p->L)) return 0;
  return p->uploadBytes(kind, layer);
}

void Engine::upload(int kind, int layer, size_t offset, const void* data, size_t bytes) {
  need(impl_)->upload(kind, layer, offset, data, bytes);
}

void Engine::finishLoad() { need(impl_)->finishLoad(); }

int Engine::forward(const int32_t* ids, const int32_t* positions, const int32_t* blocks, int S, int past, int bidirectional,
                    int logitsMode, float* logits, const Sampling* sampling) {
  Impl* p = need(impl_);
  if (p->c.dtype == 0) return p->forwardT<half>(ids, positions, blocks, S, past, bidirectional, logitsMode, logits, sampling);
  return p->forwardT<__nv_bfloat16>(ids, positions, blocks, S, past, bidirectional, logitsMode, logits, sampling);
}

void Engine::decodeMany(int firstId, const int32_t* positions, const int32_t* blocks, int n, int past, int bidirectional,
                        const Sampling& sampling, const float* randoms, int32_t* tokens) {
  Impl* p = need(impl_);
  if (p->c.dtype == 0) return p->decodeManyT<half>(firstId, positions, blocks, n, past, bidirectional, sampling, randoms, tokens);
  return p->decodeManyT<__nv_bfloat16>(firstId, positions, blocks, n, past, bidirectional, sampling, randoms, tokens);
}

MemoryStats Engine::memory() {
  Impl* p = need(impl_);
  p->sampleUsed();
  MemoryStats m;
  m.allocated = p->allocated;
  m.peakAllocated = p->peakAllocated;
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) == cudaSuccess) m.deviceUsed = t - f, m.deviceTotal = t;
  m.peakDeviceUsed = p->peakUsed;
  for (int k = 0; k < KIND_COUNT; k++) {
    if (k == W_EMBED || k == PREFIX_K || k == PREFIX_V) continue;
    for (int l = 0; l < (isPerLayer(k) ? p->L : 1); l++) m.weightBytes += p->slot(p->slotSize, k, l);
  }
  m.hostEmbeddingBytes = p->slot(p->slotSize, W_EMBED, 0);
  m.kvCacheBytes = p->kvLayerBytes * 2 * p->L + (p->kv8 ? (size_t)2 * p->L * p->G * p->maxTotal * sizeof(float) : 0);
  m.kvBytesPerToken = (size_t)2 * p->L * p->G * (p->kv8 ? p->D + sizeof(float) : (size_t)p->D * p->esz);
  m.kvStageBytes = p->kvStageBytes;
  m.scratchBytes = p->scratch ? p->scratchBytes : 0;
  return m;
}

int Engine::maxChunk() const { return std::min(kMaxChunk, need(impl_)->c.maxLength); }
int Engine::vocab() const { return need(impl_)->V; }
int Engine::decodeHeadsPerBlock() const {
  const Engine::Impl* p = need(impl_);
  return p->attnMode == 2 ? p->gqaHeads : 0;
}
bool Engine::decodeFusedNorm() const { return need(impl_)->fuseNorm; }
int Engine::prefillFlash() const { return need(impl_)->flash; }
int Engine::decodeSplits() const {
  const Engine::Impl* p = need(impl_);
  return p->attnMode == 2 ? p->gqaSplits : p->nsplit;
}
bool Engine::graphCaptured() const {
  const Engine::Impl* p = need(impl_);
  return p->graphExec != nullptr || p->graphManyExec != nullptr;  // per-step or decodeMany graph
}
void Engine::setUseGraph(bool on) { need(impl_)->c.useGraph = on; }
bool Engine::pdl() const { return need(impl_)->pdlSupported && need(impl_)->usePdl; }
void Engine::setUsePdl(bool on) {
  Impl* p = need(impl_);
  if (p->usePdl != on) p->dropGraph();  // the captured graph has the old launch attributes
  p->usePdl = on;
}

}  // namespace glm
