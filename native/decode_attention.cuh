// Decode attention (one new token against the KV cache), one block per few query heads of one KV
// group (ChatGLM-6B: 1, ChatGLM2-6B: 4 of a group's 16) and key split; the block's heads share one
// copy of the split's keys and values in shared memory. (16 heads per block, reading each cache
// row once per step, measured 4x slower for ChatGLM2-6B: too few blocks, and one block merging
// 2048 outputs: bench/RESULTS.md, 2026-11-28 H200 run 6.) The split's cached rows are copied with
// cp.async before pdl_wait(), overlapping the QKV projection's tail; only the row that kernel
// writes (this step's key and value) is copied after it. The last split of a block's heads to
// finish merges their splits (flash-decoding's combine, fused).
#pragma once
#include <type_traits>
#include "kernels.cuh"
#include "kv_int8.cuh"

namespace glm {

constexpr int DA_THREADS = 256;
constexpr int DA_TILE_MAX = 64;   // keys per tile at most (the tile size is a kernel argument); splits at most
constexpr int DA_HEADS = 4;       // query heads per block at most (a divisor of the heads per KV group)
constexpr int DA_DMAX = 128;      // head dimension at most

// Split geometry for `total` visible keys, shared by the kernel and the host: tiles of `tile`
// keys, `grid` splits launched, `perSplit` tiles each, `active` splits that have keys.
struct DecodeSplits {
  int tiles, perSplit, active;
  __host__ __device__ __forceinline__ DecodeSplits(int total, int tile, int grid) {
    tiles = (total + tile - 1) / tile;
    perSplit = (tiles + grid - 1) / grid;
    active = (tiles + perSplit - 1) / perSplit;
  }
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// grid (heads / hpb, splits <= DA_TILE_MAX), DA_THREADS threads: block (b, j) computes query heads
// b*hpb .. b*hpb + hpb - 1 (one KV group: hpb divides heads / kvHeads, hpb <= DA_HEADS) over the
// keys of split j. D <= DA_DMAX, tile <= DA_TILE_MAX. partO [heads, splits, D] and partML
// [heads, splits, 2] hold each split's unnormalised output, max and sum of exponentials;
// counter[heads / hpb] starts (and ends) at zero.
// Q8: the INT8 cache (kv_int8.cuh) in kq (Kc, Vc unused): the step's own key and value rows are
// quantized here from the QKV buffer, and the last split of the group's first block stores them.
// Scores are q . k_int8 times the row's scale, values weighted by p times theirs.
template <typename T, bool Q8 = false>
__global__ void __launch_bounds__(DA_THREADS) attn_decode_gqa_kernel(const T* __restrict__ qkv, const T* __restrict__ Kc,
                                                                     const T* __restrict__ Vc, KvQuant kq, const StepMeta* __restrict__ meta,
                                                                     Geom g, float scale, int tile, int hpb,
                                                                     float* __restrict__ partO, float* __restrict__ partML,
                                                                     unsigned* __restrict__ counter, T* __restrict__ out) {
  using E = std::conditional_t<Q8, int8_t, T>;   // a cached element
  constexpr int EPV = 16 / sizeof(E);            // elements per 16-byte copy
  // padded key rows (16 bytes): lanes reading consecutive keys hit distinct banks
  constexpr int KP = DA_DMAX + EPV;
  __shared__ __align__(16) E Ks[DA_TILE_MAX][KP];
  __shared__ __align__(16) E Vs[DA_TILE_MAX][DA_DMAX];
  __shared__ float ksc[Q8 ? DA_TILE_MAX : 1], vsc[Q8 ? DA_TILE_MAX : 1];  // Q8: the tile's row scales
  __shared__ int8_t nk[Q8 ? DA_DMAX : 1], nv[Q8 ? DA_DMAX : 1];           // Q8: this step's rows, quantized
  __shared__ float nks, nvs;
  __shared__ __align__(16) float qs[DA_HEADS][DA_DMAX];
  __shared__ float ps[DA_HEADS][DA_TILE_MAX];  // scores, then probabilities; at the end the splits' weights
  __shared__ float hm[DA_HEADS], hl[DA_HEADS], hc[DA_HEADS];
  __shared__ float2 ob[DA_THREADS];
  __shared__ int amLast;
  pdl_trigger();
  const int hb = blockIdx.x, split = blockIdx.y, grid = gridDim.y;
  const int D = g.D, DV = D / EPV, nh = hpb, h0 = hb * hpb;
  const int grp = h0 / (g.heads / g.kvHeads);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // The step's metadata and the cache rows of earlier tokens are read before pdl_wait(): the
  // decode step's first kernel is launched without PDL, so every write to them is complete.
  const int total = g.prefix + meta->past + 1;
  const DecodeSplits sp(total, tile, grid);
  if (split >= sp.active) return;
  const int tile0 = split * sp.perSplit, tile1 = min(sp.tiles, tile0 + sp.perSplit);
  const int newRow = total - 1;
  const size_t gRow = (size_t)grp * g.maxTotal;  // the group's first cache row
  const E* Kg;
  const E* Vg;
  if constexpr (Q8) Kg = kq.K + gRow * D, Vg = kq.V + gRow * D;
  else Kg = Kc + gRow * D, Vg = Vc + gRow * D;
  // Q8: the new row from nk / nv (after they are made)
  auto stageNew = [&](int t) {
    if constexpr (Q8) {
      const int r = newRow - t * tile;
      if (r < 0 || r >= tile) return;
      for (int c = tid; c < D; c += DA_THREADS) Ks[r][c] = nk[c], Vs[r][c] = nv[c];
      if (tid == 0) ksc[r] = nks, vsc[r] = nvs;
    }
  };
  auto stage = [&](int t, bool withNew) {
    const int t0 = t * tile, n = min(tile, total - t0);
    for (int i = tid; i < n * DV; i += DA_THREADS) {
      const int r = i / DV, c = (i - r * DV) * EPV;
      if ((Q8 || !withNew) && t0 + r == newRow) continue;
      cp_async16(&Ks[r][c], Kg + (size_t)(t0 + r) * D + c);
      cp_async16(&Vs[r][c], Vg + (size_t)(t0 + r) * D + c);
    }
    if constexpr (Q8) {
      for (int r = tid; r < n; r += DA_THREADS)
        if (t0 + r != newRow) ksc[r] = kq.ks[gRow + t0 + r], vsc[r] = kq.vs[gRow + t0 + r];
      if (withNew) stageNew(t);
    }
  };
  stage(tile0, false);
  pdl_wait();
  if constexpr (Q8) {
    if (warp == 0) kv_quant_row_warp<T>(qkv + g.kOff(grp), D, nk, &nks);
    else if (warp == 1) kv_quant_row_warp<T>(qkv + g.vOff(grp), D, nv, &nvs);
    __syncthreads();
    if (split == sp.active - 1 && h0 % (g.heads / g.kvHeads) == 0) {  // one block of the group stores them
      for (int c = tid; c < D; c += DA_THREADS) kq.K[(gRow + newRow) * D + c] = nk[c], kq.V[(gRow + newRow) * D + c] = nv[c];
      if (tid == 0) kq.ks[gRow + newRow] = nks, kq.vs[gRow + newRow] = nvs;
    }
    stageNew(tile0);
  } else if (newRow < tile0 * tile + tile) {
    const int r = newRow - tile0 * tile;
    for (int c = tid; c < DV; c += DA_THREADS) {
      cp_async16(&Ks[r][EPV * c], Kg + (size_t)newRow * D + EPV * c);
      cp_async16(&Vs[r][EPV * c], Vg + (size_t)newRow * D + EPV * c);
    }
  }
  for (int i = tid; i < nh * D; i += DA_THREADS) {
    const int h = i / D, d = i - h * D;
    qs[h][d] = TT<T>::f(qkv[g.qOff(h0 + h) + d]) * scale;
  }
  if (tid < nh) hm[tid] = -INFINITY, hl[tid] = 0.f;

  // Output slots: thread (slot, dp) owns dims 2dp, 2dp + 1 of head slot % nh, over part slot / nh
  // of the keys (R >= 4 slots; the parts' sums are added at the end).
  const int DP = D >> 1, R = DA_THREADS / DP;
  const int slot = tid / DP, dp = tid - slot * DP;
  const int parts = R / nh, ph = slot % nh, part = slot / nh;
  const bool pvOn = slot < nh * parts;
  float acc0 = 0.f, acc1 = 0.f;

  for (int t = tile0; t < tile1; t++) {
    if (t != tile0) {
      __syncthreads();  // the previous tile's readers are done
      stage(t, true);
    }
    cp_async_wait_all();
    __syncthreads();
    const int n = min(tile, total - t * tile);
    // scores: a warp takes (head, 32 keys), a lane one key
    const int kb = (n + 31) >> 5;
    for (int task = warp; task < nh * kb; task += DA_THREADS / 32) {
      const int h = task / kb, key = (task - h * kb) * 32 + lane;
      if (key < n) {
        const uint4* kr = reinterpret_cast<const uint4*>(&Ks[key][0]);
        const float4* qr = reinterpret_cast<const float4*>(&qs[h][0]);
        float a0 = 0.f, a1 = 0.f;
        if constexpr (Q8) {
          for (int c = 0; c < DV; c++) {
            const uint4 k = kr[c];
            const uint32_t kw[4] = {k.x, k.y, k.z, k.w};
#pragma unroll
            for (int w = 0; w < 4; w++) {
              float f[4];
              i8x4_to_float(kw[w], f);
              const float4 qa = qr[4 * c + w];
              a0 = fmaf(f[0], qa.x, a0), a1 = fmaf(f[1], qa.y, a1);
              a0 = fmaf(f[2], qa.z, a0), a1 = fmaf(f[3], qa.w, a1);
            }
          }
          ps[h][key] = (a0 + a1) * ksc[key];
        } else {
          for (int c = 0; c < DV; c++) {
            const uint4 k = kr[c];
            const float4 qa = qr[2 * c], qb = qr[2 * c + 1];
            float2 f = TT<T>::f2(k.x);
            a0 = fmaf(f.x, qa.x, a0), a1 = fmaf(f.y, qa.y, a1);
            f = TT<T>::f2(k.y);
            a0 = fmaf(f.x, qa.z, a0), a1 = fmaf(f.y, qa.w, a1);
            f = TT<T>::f2(k.z);
            a0 = fmaf(f.x, qb.x, a0), a1 = fmaf(f.y, qb.y, a1);
            f = TT<T>::f2(k.w);
            a0 = fmaf(f.x, qb.z, a0), a1 = fmaf(f.y, qb.w, a1);
          }
          ps[h][key] = a0 + a1;
        }
      }
    }
    __syncthreads();
    // online softmax, a warp per head: new max, the tile's exponentials, the rescale of what came before
    for (int h = warp; h < nh; h += DA_THREADS / 32) {
      const float a = lane < n ? ps[h][lane] : -INFINITY, b = lane + 32 < n ? ps[h][lane + 32] : -INFINITY;
      const float mOld = hm[h];
      const float mNew = fmaxf(mOld, warpMax(fmaxf(a, b)));
      const float pa = lane < n ? expf(a - mNew) : 0.f, pb = lane + 32 < n ? expf(b - mNew) : 0.f;
      if (lane < tile) ps[h][lane] = pa;
      if (lane + 32 < tile) ps[h][lane + 32] = pb;
      const float sum = warpSum(pa + pb);
      if (lane == 0) {
        const float corr = expf(mOld - mNew);  // first tile: exp(-inf) = 0
        hc[h] = corr;
        hl[h] = hl[h] * corr + sum;
        hm[h] = mNew;
      }
    }
    __syncthreads();
    if (pvOn) {
      const int per = (n + parts - 1) / parts, ka = part * per, kz = min(n, ka + per);
      acc0 *= hc[ph], acc1 *= hc[ph];
      for (int key = ka; key < kz; key++) {
        float2 v;
        float p = ps[ph][key];
        if constexpr (Q8) {
          const uint32_t u = *reinterpret_cast<const uint16_t*>(&Vs[key][2 * dp]);
          v = make_float2((float)(int8_t)(u & 255u), (float)(int8_t)(u >> 8));
          p *= vsc[key];
        } else {
          v = TT<T>::f2(*reinterpret_cast<const uint32_t*>(&Vs[key][2 * dp]));
        }
        acc0 = fmaf(p, v.x, acc0);
        acc1 = fmaf(p, v.y, acc1);
      }
    }
  }

  // this split's partial results: the parts of a head added in a fixed order
  ob[tid] = pvOn ? make_float2(acc0, acc1) : make_float2(0.f, 0.f);
  __syncthreads();
  for (int i = tid; i < nh * DP; i += DA_THREADS) {
    const int h = i / DP, d2 = i - h * DP;
    float x = 0.f, y = 0.f;
    for (int p = 0; p < parts; p++) {
      const float2 o = ob[(p * nh + h) * DP + d2];
      x += o.x, y += o.y;
    }
    float* po = partO + ((size_t)(h0 + h) * grid + split) * D + 2 * d2;
    po[0] = x;
    po[1] = y;
  }
  if (tid < nh) {
    partML[2 * ((size_t)(h0 + tid) * grid + split)] = hm[tid];
    partML[2 * ((size_t)(h0 + tid) * grid + split) + 1] = hl[tid];
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) amLast = atomicAdd(&counter[hb], 1u) == (unsigned)sp.active - 1;
  __syncthreads();
  if (!amLast) return;
  __threadfence();
  // the last split of this block's heads merges them: each split's weight exp(m_j - M) / L, a
  // warp per head, then every output's loads over the splits issued together
  for (int h = warp; h < nh; h += DA_THREADS / 32) {
    const float* pml = partML + (size_t)(h0 + h) * grid * 2;
    float M = -INFINITY;
    for (int j = lane; j < sp.active; j += 32) M = fmaxf(M, __ldcg(pml + 2 * j));
    M = warpMax(M);
    float L = 0.f;
    for (int j = lane; j < sp.active; j += 32) L += __ldcg(pml + 2 * j + 1) * expf(__ldcg(pml + 2 * j) - M);
    L = warpSum(L);
    for (int j = lane; j < sp.active; j += 32) ps[h][j] = expf(__ldcg(pml + 2 * j) - M) / L;  // empty split: 0
  }
  __syncthreads();
  const int i0 = tid, i1 = tid + DA_THREADS;  // nh * D <= 2 * DA_THREADS
  const bool on0 = i0 < nh * D, on1 = i1 < nh * D;
  const int hA = on0 ? i0 / D : 0, hB = on1 ? i1 / D : 0;
  const float* poA = partO + (size_t)(h0 + hA) * grid * D + (i0 - hA * D);
  const float* poB = partO + (size_t)(h0 + hB) * grid * D + (i1 - hB * D);
  float oA = 0.f, oB = 0.f;
#pragma unroll 8
  for (int j = 0; j < sp.active; j++) {
    if (on0) oA = fmaf(ps[hA][j], __ldcg(poA + (size_t)j * D), oA);
    if (on1) oB = fmaf(ps[hB][j], __ldcg(poB + (size_t)j * D), oB);
  }
  if (on0) out[(size_t)h0 * D + i0] = TT<T>::t(oA);
  if (on1) out[(size_t)h0 * D + i1] = TT<T>::t(oB);
  if (tid == 0) counter[hb] = 0;
}

}  // namespace glm
