/** Deterministic test data for the quantization tests (no I/O, no Math.random). */

/** xorshift32-based uniform [0, 1). */
export function rng(seed: number): () => number {
  let s = (seed * 2654435761) >>> 0 || 1
  return () => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s / 2 ** 32
  }
}

/** Standard normal samples (Box-Muller). */
export function gaussian(seed: number): () => number {
  const u = rng(seed)
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u())
}

/** A [rows, cols] weight with N(0, std^2) entries, as f32. */
export function randomWeight(rows: number, cols: number, seed: number, std = 0.02): Float32Array {
  const g = gaussian(seed)
  const w = new Float32Array(rows * cols)
  for (let i = 0; i < w.length; i++) w[i] = g() * std
  return w
}
