// glmtool's CUDA engine: the ChatGLM decoder (every generation, by feature flags) with its KV cache on one GPU.
// Plain C++ interface (no CUDA types) shared by the kernels (engine.cu) and the Node binding
// (addon.cpp). Every failure throws std::runtime_error with a one-line reason.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace glm {

struct DeviceInfo {
  bool ok = false;
  std::string reason;        // why the engine cannot run (empty when ok)
  std::string name;
  int ccMajor = 0, ccMinor = 0;
  int multiprocessors = 0;
  size_t totalMemory = 0, freeMemory = 0, l2Bytes = 0;
  double peakBandwidth = 0;  // bytes/s from memory clock and bus width (datasheet-style peak)
  int driverVersion = 0, runtimeVersion = 0;
  std::string cublasPath;
  int cublasVersion = 0;
};

// Checks driver, GPU and cuBLAS, in that order; `reason` names the first that is missing.
DeviceInfo probe();
// Device-to-device copy rate, bytes read + written per second (median of `iters`).
double measureCopyBandwidth(size_t bytes, int iters);

// Weight slots. Per-layer kinds take a layer index; the others ignore it.
enum WeightKind {
  W_QKV = 0, B_QKV, W_DENSE, B_DENSE, W_UP, B_UP, W_DOWN, B_DOWN, W_LN1, B_LN1, W_LN2, B_LN2,
  W_FINAL, B_FINAL, W_LMHEAD, W_EMBED, PREFIX_K, PREFIX_V,
  // quantized models: the fp16 weight_scale of W_QKV, W_DENSE, W_UP, W_DOWN ([rows] or [rows, K / group])
  S_QKV, S_DENSE, S_UP, S_DOWN, KIND_COUNT
};

struct EngineConfig {
  // The decoder's features (src/models/arch.ts EngineFlags, set by each generation's module);
  // defaults are ChatGLM2-6B's.
  bool interleavedQkv = false;     // QKV rows per head [q; k; v] (ChatGLM-6B; needs kvHeads == heads), else [q heads; k groups; v groups]
  bool rotary2d = false;           // two rotate_half halves per head, by position and block position (ChatGLM-6B), else
                                   // interleaved pairs on the first half of each head
  bool rmsnorm = true;             // RMSNorm without bias, else LayerNorm with bias
  float deepnormAlpha = 0.f;       // > 0: post-norm residual alpha * LN(x) + f(LN(x)) (ChatGLM-6B); 0: pre-norm x + f(norm(x))
  bool swiglu = true;              // SwiGLU MLP (up projection 2 * ffn rows), else GELU (tanh)
  double ropeBase = 10000;         // theta_j = 1 / ropeBase^(2j / rotaryDim), in float32
  bool roundInvFreqToHalf = false; // theta rounded to float16 (ChatGLM-6B's inv_freq.half())
  int dtype = 0;            // 0: float16, 1: bfloat16 (weights, activations, KV cache)
  int layers = 0, hidden = 0, heads = 0, kvHeads = 0, headDim = 0, ffn = 0, vocab = 0;
  int maxLength = 0;        // tokens the KV cache holds (prefix entries extra)
  int prefixLength = 0;     // P-Tuning v2 prefix entries in front of the cache
  float eps = 1e-5f;
  bool qkvBias = true, denseBias = false, mlpBias = false, postLayerNorm = true;
  bool useGraph = true;     // capture the decode step once as a CUDA graph and replay it
  // Weight-only quantization of the four per-layer linears (glmtool quantize / the published
  // int4 layout): 0 none, 8 int8 [rows, K], 4 packed int4 [rows, K/2] (column 2j in the high
  // nibble); the engine pads each row to 16 bytes. groupSize 0: one fp16 scale per row, else one
  // per row and `groupSize` input columns.
  int quantBits = 0;
  int groupSize = 0;
  // The KV cache: 0 the model's float type, 1 int8 with a float32 scale per KV group and token
  // (kv_int8.cuh; the decode attention per KV group only).
  int kvDtype = 0;
  int device = 0;
};

struct Sampling {
  int greedy = 1;
  float temperature = 1.f;
  int topK = 0;
  float topP = 1.f;
  float random = 0.f;       // uniform [0, 1) drawn by the caller (seeded, reproducible)
  int vocabLimit = 0;       // only ids below this are candidates (0: the whole vocabulary)
};

struct MemoryStats {
  size_t allocated = 0, peakAllocated = 0;     // this engine's own cudaMalloc bytes
  size_t deviceUsed = 0, peakDeviceUsed = 0;   // total - free per cudaMemGetInfo (context, cuBLAS, other users)
  size_t deviceTotal = 0;
  size_t weightBytes = 0;                      // weights on the GPU (the embedding table stays on the host)
  size_t hostEmbeddingBytes = 0;
  size_t kvCacheBytes = 0;
  size_t kvBytesPerToken = 0;
  size_t scratchBytes = 0;                     // quantized models: the prefill's fp16 dequantization buffer (allocated on first prefill)
  size_t kvStageBytes = 0;                     // INT8 KV cache: the prefill attention's fp16 copy of the visible rows (one layer's)
};

class Engine {
 public:
  explicit Engine(const EngineConfig& cfg);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Bytes a slot holds (0: the slot is unused for this configuration).
  size_t slotBytes(int kind, int layer) const;
  // Copy `bytes` of a slot's contents at `offset` through the pinned staging buffers.
  void upload(int kind, int layer, size_t offset, const void* data, size_t bytes);
  // Wait for the copies, check every slot was filled, place the prefix in the cache.
  void finishLoad();

  // Run S new tokens against `past` cached ones. positions/blocks: S entries (blocks may be null
  // for v2). logitsMode 0: none, 1: last row, 2: every row; `logits` receives rows x vocab
  // floats. With `sampling`, the next token is chosen on the GPU from the last row and returned.
  int forward(const int32_t* ids, const int32_t* positions, const int32_t* blocks, int S, int past, int bidirectional,
              int logitsMode, float* logits, const Sampling* sampling);

  // n decode steps back to back without the host: step i feeds (i == 0 ? firstId : tokens[i - 1])
  // at positions[i] / blocks[i] (blocks may be null for v2) after past + i cached tokens, samples
  // with `sampling` and randoms[i] (may be null when greedy), and writes its token to tokens[i].
  // The input row is gathered on the GPU from the pinned, mapped host embedding table; one sync
  // at the end. Every step's K/V goes into the cache (a caller that stops early keeps its length).
  void decodeMany(int firstId, const int32_t* positions, const int32_t* blocks, int n, int past, int bidirectional,
                  const Sampling& sampling, const float* randoms, int32_t* tokens);
  MemoryStats memory();
  int maxChunk() const;
  int vocab() const;
  int decodeSplits() const;
  // Query heads per block of the decode attention (decode_attention.cuh); 0: one block per
  // query head (attn_decode2_kernel, GLMTOOL_CUDA_ATTN=head).
  int decodeHeadsPerBlock() const;
  // Whether the decode step's norms are fused into its GEMVs (GLMTOOL_CUDA_NORM).
  bool decodeFusedNorm() const;
  // The prefill attention: 0 cuBLAS scores + masked softmax + cuBLAS; 1 or 2 the flash kernel
  // (flash_attention.cuh) with that many 16-row query tiles a warp (GLMTOOL_CUDA_FLASH).
  int prefillFlash() const;
  bool graphCaptured() const;  // the per-step or the decodeMany step graph has been captured
  void setUseGraph(bool on);
  // Programmatic dependent launch in the decode step (Hopper and newer; GLMTOOL_CUDA_PDL=0 turns it off).
  bool pdl() const;
  void setUsePdl(bool on);
  void dispose();

  struct Impl;

 private:
  Impl* impl_ = nullptr;
};

}  // namespace glm
