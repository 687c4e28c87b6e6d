// The decode step's quantized GEMV on tensor cores (issue 12): int8 / int4 weights dequantized
// in registers to fp16 (exactly: |q| <= 128) and multiplied by `mma.sync.m16n8k16` with fp32
// accumulation, x the B operand (replicated over its 8 columns, so every column holds the dot).
// It replaces gemvq_kernel's per-weight byte permute + float add + FMA (about 4 instructions a
// weight, instruction-bound at 34-39% of the copy rate for int4, bench/RESULTS.md) with about one
// instruction a weight: int4 takes one LOP3 and one half2 add / FMA per two weights, int8 one PRMT
// and one half2 add per two, and one MMA per 256 weights.
//
// Tiled layout (the engine repacks each quantized weight into it on load, qtile_repack_kernel;
// rows and K multiples of 16). A tile is 16 rows; its K is cut into chunks of 16 columns, one MMA
// each. Per chunk a lane holds the A fragment elements e = 0..7 of PTX's m16n8k16 layout:
//   row = (lane >> 2) + 8 * ((e >> 1) & 1),  col = 2 * (lane & 3) + (e & 1) + 8 * (e >> 2)
// int4: one 32-bit word a chunk, element e in nibble (e >> 1) + 4 * (e & 1), stored as q + 8;
// int8: two words a chunk, element e in byte e & 3 of word e >> 2, stored as q + 128.
// GW chunks (int4 4, int8 2) make one 16-byte load a lane: a tile is its groups of 32 lanes x 16
// bytes (512 bytes, GW chunks), then the tail chunks (K / 16 mod GW) at TC * WPC * 4 bytes a lane.
// A tile takes 16 * K / 2 (int4) or 16 * K (int8) bytes, no more than the row-major padded rows.
#pragma once
#include "kernels.cuh"

namespace glm {

template <int WQ> struct QTile {
  static constexpr int GW = WQ == WQ_I4 ? 4 : 2;   // chunks per 16-byte lane load
  static constexpr int WPC = WQ == WQ_I4 ? 1 : 2;  // 32-bit words a lane holds per chunk
  static constexpr int CHUNK_BYTES = 32 * 4 * WPC;  // one chunk of a tile
};

// Byte offset of word w (< WPC) of lane l's chunk kc in tile t, KC = K / 16 chunks a row.
template <int WQ>
__host__ __device__ __forceinline__ size_t qtile_offset(int t, int kc, int l, int w, int KC) {
  constexpr int GW = QTile<WQ>::GW, WPC = QTile<WQ>::WPC;
  const size_t base = (size_t)t * KC * QTile<WQ>::CHUNK_BYTES;
  const int g = kc / GW, v = kc % GW, NG = KC / GW;
  if (g < NG) return base + (size_t)g * 512 + l * 16 + (v * WPC + w) * 4;
  const int tail = KC - NG * GW;
  return base + (size_t)NG * 512 + l * (tail * WPC * 4) + (v * WPC + w) * 4;
}
__host__ __device__ __forceinline__ int frag_row(int l, int e) { return (l >> 2) + 8 * ((e >> 1) & 1); }
__host__ __device__ __forceinline__ int frag_col(int l, int e) { return 2 * (l & 3) + (e & 1) + 8 * (e >> 2); }
__host__ __device__ __forceinline__ int i4_nibble(int e) { return (e >> 1) + 4 * (e & 1); }

// The repack: one thread per output word, from the row-major layout (rowBytes a row; int4 column
// 2j in the high nibble of byte j, signed) of rows [0, rows) into tiles [0, rows / 16).
template <int WQ>
__global__ void qtile_repack_kernel(const uint8_t* __restrict__ src, int rowBytes, int rows, int K, uint8_t* __restrict__ dst) {
  constexpr int WPC = QTile<WQ>::WPC;
  const int KC = K / 16;
  const size_t words = (size_t)(rows / 16) * KC * 32 * WPC;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
    const int w = (int)(i % WPC), l = (int)(i / WPC % 32);
    const int kc = (int)(i / (WPC * 32) % KC), t = (int)(i / ((size_t)WPC * 32 * KC));
    uint32_t word = 0;
    if (WQ == WQ_I4) {
      for (int e = 0; e < 8; e++) {
        const int r = 16 * t + frag_row(l, e), c = 16 * kc + frag_col(l, e);
        const uint8_t b = src[(size_t)r * rowBytes + c / 2];
        const uint32_t u = ((c & 1) ? b & 15u : b >> 4) ^ 8u;
        word |= u << (4 * i4_nibble(e));
      }
    } else {
      for (int k = 0; k < 4; k++) {
        const int e = 4 * w + k;
        const int r = 16 * t + frag_row(l, e), c = 16 * kc + frag_col(l, e);
        word |= (uint32_t)(src[(size_t)r * rowBytes + c] ^ 0x80u) << (8 * k);
      }
    }
    *reinterpret_cast<uint32_t*>(dst + qtile_offset<WQ>(t, kc, l, w, KC)) = word;
  }
}

// Prefill from the tiled layout: dequant_kernel's arithmetic (T(q * scale), the published
// rounding). Block (x, t) takes tile t's chunks [x * DQ_CHUNKS, + DQ_CHUNKS) (int4: 512 columns,
// int8: 256): its 8 warps read them as stored (a warp one 512-byte group of GW chunks: coalesced),
// put q into shared memory in row order, then write the 16 rows out 16 bytes a thread, scaled.
// Rows [0, rows) (a multiple of 16) of a weight whose tile 0 is at W; grid dq_grid<WQ>(rows, K).
template <int WQ> __host__ __device__ constexpr int dq_chunks() { return 8 * QTile<WQ>::GW; }
template <int WQ> inline dim3 dq_grid(int rows, int K) { return dim3((K / 16 + dq_chunks<WQ>() - 1) / dq_chunks<WQ>(), rows / 16); }
template <typename T, int WQ>
__global__ void __launch_bounds__(256) dequant_tiled_kernel(const uint8_t* __restrict__ W, QuantCtx qc, int groupSize, int K,
                                                            T* __restrict__ out) {
  constexpr int GW = QTile<WQ>::GW, WPC = QTile<WQ>::WPC, CH = dq_chunks<WQ>(), COLS = 16 * CH, PAD = 8;
  __shared__ __align__(16) T qs[16][COLS + PAD];
  pdl_trigger();
  pdl_wait();
  const int KC = K / 16, NG = KC / GW, t = blockIdx.y, kc0 = blockIdx.x * CH;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nc = min(CH, KC - kc0);  // chunks of this block
  // warp w: chunks kc0 + w * GW .. + GW - 1
  const int g = kc0 / GW + warp;
  uint32_t words[GW * WPC];
  if (g < NG) {
    const uint4 v = *reinterpret_cast<const uint4*>(W + qtile_offset<WQ>(t, g * GW, lane, 0, KC));
    words[0] = v.x, words[1] = v.y, words[2] = v.z, words[3] = v.w;
  } else {
#pragma unroll
    for (int v = 0; v < GW; v++)
#pragma unroll
      for (int w = 0; w < WPC; w++) {
        const int kc = g * GW + v;
        words[v * WPC + w] = kc < KC ? *reinterpret_cast<const uint32_t*>(W + qtile_offset<WQ>(t, kc, lane, w, KC)) : 0u;
      }
  }
#pragma unroll
  for (int v = 0; v < GW; v++) {
    const int lc = warp * GW + v;  // the chunk within the block
    if (lc >= nc) break;
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      float q0, q1;
      if (WQ == WQ_I4) {
        const uint32_t word = words[v];
        q0 = (float)(int)((word >> (4 * i4_nibble(e))) & 15u) - 8.f;
        q1 = (float)(int)((word >> (4 * i4_nibble(e + 1))) & 15u) - 8.f;
      } else {
        const uint32_t word = words[v * WPC + (e >> 2)];
        q0 = (float)(int)((word >> (8 * (e & 3))) & 255u) - 128.f;
        q1 = (float)(int)((word >> (8 * ((e + 1) & 3))) & 255u) - 128.f;
      }
      T* d = &qs[frag_row(lane, e)][16 * lc + frag_col(lane, e)];
      d[0] = TT<T>::t(q0);
      d[1] = TT<T>::t(q1);
    }
  }
  __syncthreads();
  const int n8 = nc * 2;  // 8-column pieces a row
  for (int i = threadIdx.x; i < 16 * n8; i += 256) {
    const int r = i / n8, c = (i - r * n8) * 8, col = 16 * kc0 + c, row = 16 * t + r;
    const float s = __half2float(qc.scale[(size_t)row * qc.groups + (groupSize ? col / groupSize : 0)]);
    T o[8];
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = TT<T>::t(TT<T>::f(qs[r][c + k]) * s);
    *reinterpret_cast<uint4*>(out + (size_t)row * K + col) = *reinterpret_cast<const uint4*>(o);
  }
}

__device__ __forceinline__ uint32_t h2u(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
__device__ __forceinline__ __half2 u2h(uint32_t u) {
  __half2 h;
  memcpy(&h, &u, 4);
  return h;
}
// A fragment (4 half2) of one chunk: int4 word -> q as fp16, the 0x6400 magic (1024 + u in a
// half's mantissa) then subtracting 1032, or for the high nibbles (1024 + 16u) / 16 - 72.
__device__ __forceinline__ void frag_i4(uint32_t w, uint32_t (&a)[4]) {
  const __half2 off = u2h(0x64086408u), sc = u2h(0x2C002C00u), offh = u2h(0xD480D480u);
  const uint32_t w2 = w >> 8;
  a[0] = h2u(__hsub2(u2h((w & 0x000F000Fu) | 0x64006400u), off));
  a[1] = h2u(__hfma2(u2h((w & 0x00F000F0u) | 0x64006400u), sc, offh));
  a[2] = h2u(__hsub2(u2h((w2 & 0x000F000Fu) | 0x64006400u), off));
  a[3] = h2u(__hfma2(u2h((w2 & 0x00F000F0u) | 0x64006400u), sc, offh));
}
// int8 words -> q as fp16: each byte under 0x64 (1024 + u), minus 1152
__device__ __forceinline__ void frag_i8(uint32_t w0, uint32_t w1, uint32_t (&a)[4]) {
  const __half2 off = u2h(0x64806480u);
  a[0] = h2u(__hsub2(u2h(__byte_perm(w0, 0x64646464u, 0x4140)), off));
  a[1] = h2u(__hsub2(u2h(__byte_perm(w0, 0x64646464u, 0x4342)), off));
  a[2] = h2u(__hsub2(u2h(__byte_perm(w1, 0x64646464u, 0x4140)), off));
  a[3] = h2u(__hsub2(u2h(__byte_perm(w1, 0x64646464u, 0x4342)), off));
}
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

constexpr int QMMA_THREADS = 256;
constexpr int QMMA_XMAX = 16384;  // the widest input a non-NORM call reads into shared memory

// Per-lane state of one warp's chunk loop: the accumulators and, grouped, the scale group's
// partial sums (flushed into acc with the two rows' scales at each group's end or the slice's end).
template <bool GROUPED> struct QAcc {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  float part[4] = {0.f, 0.f, 0.f, 0.f};
  int left = 0;  // GROUPED: chunks left in the current scale group
};

// One chunk: its A fragment from the lane's words, B from x in shared memory (columns
// 16 kc + 2 (lane & 3) + {0, 1} and + 8), accumulated; grouped, flushed at its scale group's end.
template <int WQ, bool GROUPED>
__device__ __forceinline__ void qmma_chunk(QAcc<GROUPED>& s, uint32_t w0, uint32_t w1, int kc, const half* xs, int lane,
                                           const half* srow0, const half* srow8, int cpg) {
  uint32_t a[4];
  if (WQ == WQ_I4) frag_i4(w0, a);
  else frag_i8(w0, w1, a);
  const half* xp = xs + 16 * kc + 2 * (lane & 3);
  const uint32_t b0 = *reinterpret_cast<const uint32_t*>(xp), b1 = *reinterpret_cast<const uint32_t*>(xp + 8);
  if (!GROUPED) {
    mma16816(s.acc, a, b0, b1);
  } else {
    mma16816(s.part, a, b0, b1);
    if (--s.left == 0) {
      const int g = kc / cpg;
      s.acc[0] = fmaf(__half2float(__ldg(srow0 + g)), s.part[0], s.acc[0]);
      s.acc[2] = fmaf(__half2float(__ldg(srow8 + g)), s.part[2], s.acc[2]);
      s.part[0] = s.part[1] = s.part[2] = s.part[3] = 0.f;
      s.left = cpg;
    }
  }
}

// The block: TILES tiles of 16 weight rows x KS = 8 / TILES slices of K, one (tile, slice) per
// warp; the slices' sums meet in shared memory, then gemv_store() writes the outputs.
//   EPI_SWIGLU: outputs j in [8 TILES b, 8 TILES (b + 1)), tiles 0..TILES/2-1 the rows j, the
//     others the rows F + j (F a multiple of 16);
//   EPI_ROPE: weight rows [16 TILES b, 16 TILES (b + 1)) (whole rotary pairs: 16 TILES a multiple
//     of D / 2 with 2D rotary), `rows` the pair count as in gemv2_rows;
//   otherwise: outputs = weight rows [16 TILES b, ...).
// U groups of 16-byte loads a lane in flight, the next U prefetched while the current ones multiply.
template <typename T, int EPI, int TILES, int U, bool NORM, int WQ, bool GROUPED>
__global__ void __launch_bounds__(QMMA_THREADS) gemvmma_kernel(const uint8_t* __restrict__ W, const T* __restrict__ x,
                                                               const T* __restrict__ bias, void* __restrict__ out, int rows, int K,
                                                               int F, RopeCtx rc, NormCtx nc, QuantCtx qc) {
  constexpr int KS = QMMA_THREADS / 32 / TILES;
  constexpr int GW = QTile<WQ>::GW, WPC = QTile<WQ>::WPC;
  constexpr int XS = NORM ? NORM_FUSED_MAX : QMMA_XMAX;
  __shared__ __align__(16) half xsh[XS];
  __shared__ float red[33];
  __shared__ float dots[KS][16 * TILES];
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ti = warp % TILES, ks = warp / TILES;
  int tile;
  bool valid;
  if constexpr (EPI == EPI_SWIGLU) {
    constexpr int HT = TILES / 2;
    const int jt = blockIdx.x * HT + ti % HT;
    valid = jt * 16 < F;
    tile = ti < HT ? jt : F / 16 + jt;
  } else {
    const int wrows = EPI == EPI_ROPE ? 2 * rows : rows;
    tile = blockIdx.x * TILES + ti;
    valid = tile * 16 < wrows;
  }
  const int KC = K / 16, NG = KC / GW;
  const int g0 = ks * NG / KS, g1 = (ks + 1) * NG / KS;
  const uint8_t* tb = W + (size_t)tile * KC * QTile<WQ>::CHUNK_BYTES;
  const uint4* wp = reinterpret_cast<const uint4*>(tb) + lane;  // group g at wp[32 g]
  const uint4 z = make_uint4(0, 0, 0, 0);
  uint4 cur[U];
#pragma unroll
  for (int u = 0; u < U; u++) cur[u] = valid && g0 + u < g1 ? ld_stream(wp + 32 * (g0 + u)) : z;
  pdl_wait();
  if (NORM) {
    norm_into_shared<half>(reinterpret_cast<const half*>(x), K, nc, xsh, red);
  } else {
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    uint4* xd = reinterpret_cast<uint4*>(xsh);
    for (int i = threadIdx.x; i < K / 8; i += QMMA_THREADS) xd[i] = __ldg(xv + i);
    __syncthreads();
  }
  const int r0 = tile * 16 + (lane >> 2);
  const half* srow0 = qc.scale + (size_t)r0 * qc.groups;
  const half* srow8 = srow0 + (size_t)8 * qc.groups;
  const int cpg = GROUPED ? (WQ == WQ_I4 ? 2 * qc.groupUnits : qc.groupUnits) : 1;  // chunks per scale group
  QAcc<GROUPED> s;
  if (GROUPED) s.left = cpg - (g0 * GW) % cpg;
  if (valid) {
    for (int g = g0; g < g1; g += U) {
      uint4 nxt[U];
#pragma unroll
      for (int u = 0; u < U; u++) nxt[u] = g + U + u < g1 ? ld_stream(wp + 32 * (g + U + u)) : z;
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (g + u < g1) {
          const uint32_t wv[4] = {cur[u].x, cur[u].y, cur[u].z, cur[u].w};
#pragma unroll
          for (int v = 0; v < GW; v++)
            qmma_chunk<WQ, GROUPED>(s, wv[v * WPC], wv[v * WPC + WPC - 1], (g + u) * GW + v, xsh, lane, srow0, srow8, cpg);
        }
      }
#pragma unroll
      for (int u = 0; u < U; u++) cur[u] = nxt[u];
    }
    // the tail chunks (K / 16 mod GW), by the last slice
    const int tail = KC - NG * GW;
    if (ks == KS - 1 && tail) {
      const uint32_t* tp = reinterpret_cast<const uint32_t*>(tb + (size_t)NG * 512 + lane * (tail * WPC * 4));
      for (int v = 0; v < tail; v++)
        qmma_chunk<WQ, GROUPED>(s, __ldg(tp + v * WPC), __ldg(tp + v * WPC + WPC - 1), NG * GW + v, xsh, lane, srow0, srow8, cpg);
    }
    const int end = g1 * GW + (ks == KS - 1 ? tail : 0);  // one past the slice's last chunk
    if (GROUPED && s.left != cpg && end > g0 * GW) {    // the slice ended inside a scale group
      const int g = (end - 1) / cpg;
      s.acc[0] = fmaf(__half2float(__ldg(srow0 + g)), s.part[0], s.acc[0]);
      s.acc[2] = fmaf(__half2float(__ldg(srow8 + g)), s.part[2], s.acc[2]);
    }
  }
  // lane l holds row l / 4 of the tile in acc[0] and row l / 4 + 8 in acc[2] (every column alike)
  if ((lane & 3) == 0) {
    dots[ks][16 * ti + (lane >> 2)] = s.acc[0];
    dots[ks][16 * ti + (lane >> 2) + 8] = s.acc[2];
  }
  __syncthreads();
  const int lr = threadIdx.x;
  if (lr >= 16 * TILES) return;
  // the slices' sums in a fixed order, times the row's scale (per channel)
  auto dot = [&](int local, int wrow) {
    float a = 0.f;
#pragma unroll
    for (int k = 0; k < KS; k++) a += dots[k][local];
    return GROUPED ? a : a * __half2float(qc.scale[wrow]);
  };
  if (EPI == EPI_SWIGLU) {
    constexpr int HR = 8 * TILES;
    const int j = blockIdx.x * HR + lr;
    if (lr < HR && j < F) gemv_store<T, EPI>(dot(lr, j), dot(HR + lr, F + j), j, bias, out, F, rc, nc);
  } else if (EPI == EPI_ROPE) {
    const int r = blockIdx.x * 16 * TILES + lr;
    if (r >= 2 * rows) return;
    // is r the first row of its rotary pair (rope_pair()'s ia), and which pair
    const int D = rc.g.D, half_ = D / 2, quarter = D / 4, blk = r / D, d = r % D;
    int p;
    if (rc.g.rotary2d) {
      const int h2 = d / half_, i = d % half_;
      if (i >= quarter) return;
      p = h2 * quarter + i;
    } else {
      if (d & 1) return;
      p = d / 2;
    }
    const int j = blk * half_ + p;
    const int delta = rc.g.rotary2d ? quarter : 1;
    gemv_store<T, EPI>(dot(lr, r), dot(lr + delta, r + delta), j, bias, out, F, rc, nc);
  } else {
    const int row = blockIdx.x * 16 * TILES + lr;
    if (row < rows) gemv_store<T, EPI>(dot(lr, row), 0.f, row, bias, out, F, rc, nc);
  }
}

}  // namespace glm
