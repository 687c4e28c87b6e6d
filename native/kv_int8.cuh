// The INT8 KV cache (--kv-dtype int8, issue 12): every cached key and value row of one KV group
// and token is stored as D int8 values with one float32 scale, symmetric: scale = max|x| / 127,
// q = round(x / scale) (all-zero rows: scale 0). Half the bytes of an fp16 cache, plus 4 bytes a
// row (3% at D = 128).
//
// Who writes and reads it:
// - decode: the QKV GEMV's rotary epilogue leaves the step's k and v rows in the QKV buffer (as
//   it leaves q), and the decode attention quantizes them itself (kv_quant_row_warp, in shared
//   memory, so every block of the group sees the same values); one block of the group stores them
//   in the cache (decode_attention.cuh).
// - prefill: the rotary kernel rotates k in place in the QKV buffer, kv_quant_kernel stores the
//   new rows, and kv_dequant_kernel expands every visible row (earlier ones included) to fp16 in
//   a staging buffer the cuBLAS attention reads. So prefill and decode see exactly the stored
//   values.
#pragma once
#include "kernels.cuh"

namespace glm {

struct KvQuant {
  int8_t* K;     // [groups][maxTotal][D]
  int8_t* V;
  float* ks;     // [groups][maxTotal]
  float* vs;
};

// One warp quantizes one row of D <= 128 values: lane i holds dims i, i + 32, i + 64, i + 96.
template <typename T>
__device__ __forceinline__ void kv_quant_row_warp(const T* __restrict__ src, int D, int8_t* __restrict__ dst, float* __restrict__ scale) {
  const int lane = threadIdx.x & 31;
  float v[4];
  float m = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int d = lane + 32 * i;
    v[i] = d < D ? TT<T>::f(src[d]) : 0.f;
    m = fmaxf(m, fabsf(v[i]));
  }
  m = warpMax(m);
  const float inv = m > 0.f ? 127.f / m : 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int d = lane + 32 * i;
    if (d < D) dst[d] = (int8_t)max(-127, min(127, __float2int_rn(v[i] * inv)));
  }
  if (lane == 0) *scale = m / 127.f;
}

// The signed bytes of a 32-bit word as floats.
__device__ __forceinline__ void i8x4_to_float(uint32_t w, float* f) {
#pragma unroll
  for (int k = 0; k < 4; k++) f[k] = (float)((int32_t)(w << (24 - 8 * k)) >> 24);
}

// Prefill: rows [0, rows) of every group into cache rows row0 + r. grid (rows, groups, 2): z 0 the
// keys, 1 the values; one warp. Row r of group g of the keys is at srcK + r * rowStride + g * groupStride.
template <typename T>
__global__ void kv_quant_kernel(const T* __restrict__ srcK, const T* __restrict__ srcV, long long rowStride, long long groupStride,
                                KvQuant kv, int maxTotal, int row0, int D) {
  pdl_trigger();
  pdl_wait();
  const int r = blockIdx.x, g = blockIdx.y, z = blockIdx.z;
  const T* src = (z ? srcV : srcK) + r * rowStride + g * groupStride;
  const size_t row = (size_t)g * maxTotal + row0 + r;
  kv_quant_row_warp<T>(src, D, (z ? kv.V : kv.K) + row * D, (z ? kv.vs : kv.ks) + row);
}

// Rows [0, n) of every group expanded to T: keys into out [groups][n][D], values after them.
template <typename T>
__global__ void kv_dequant_kernel(KvQuant kv, int groups, int maxTotal, int n, int D, T* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int D8 = D >> 3;
  const size_t perSide = (size_t)groups * n * D8;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < 2 * perSide; i += (size_t)gridDim.x * blockDim.x) {
    const int z = i >= perSide;
    const size_t j = i - z * perSide;
    const int c = (int)(j % D8);
    const size_t gr = j / D8;  // g * n + r
    const size_t row = gr / n * maxTotal + gr % n;
    const uint2 q = *reinterpret_cast<const uint2*>((z ? kv.V : kv.K) + row * D + 8 * c);
    const float s = (z ? kv.vs : kv.ks)[row];
    float f[8];
    i8x4_to_float(q.x, f);
    i8x4_to_float(q.y, f + 4);
    T o[8];
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = TT<T>::t(f[k] * s);
    *reinterpret_cast<uint4*>(out + (size_t)z * groups * n * D + gr * D + 8 * c) = *reinterpret_cast<const uint4*>(o);
  }
}

}  // namespace glm
