/**
 * IEEE binary16 arithmetic for the quantizers, fast enough to run over every weight of a 6B
 * model (a per-element DataView call through the float16 polyfill is ~20x slower).
 *
 * The published quantizer (docs/chatglm.md section 8) computes in fp16 on the GPU, where each
 * half-precision +, -, *, / is done in f32 and the f32 result rounded to fp16. That is exactly
 * the correctly rounded fp16 result: rounding twice (to p=24 bits, then to q=11) is innocuous
 * for these four operations whenever p >= 2q + 2 (Figueroa, "When is double rounding
 * innocuous?", SIGNUM 1995), and 24 >= 2*11 + 2. So `f32ToF16Bits(Math.fround(a op b))` on fp16
 * operands a, b reproduces the GPU bit for bit, and so does rounding the double result directly.
 */

/** Round a number to fp16 bits: first to f32, then to nearest even fp16 (one implementation, in formats). */
export {toFloat16Bits as f32ToF16Bits} from '../formats/dtype-convert.js'

let table: Float32Array | undefined

/** fp16 bits -> value, exactly, from a 65,536-entry table built once by bit arithmetic. */
export function f16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536)
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1
      const e = (h >>> 10) & 0x1f
      const m = h & 0x3ff
      let v: number
      if (e === 0) v = m * 2 ** -24
      else if (e === 31) v = m === 0 ? Infinity : NaN
      else v = (1 + m / 1024) * 2 ** (e - 15)
      table[h] = sign * v
    }
  }
  return table
}

export function f16ToNumber(bits: number): number {
  return f16Table()[bits & 0xffff]
}

/** Round half to even (torch.round, C nearbyint in the default mode); NaN stays NaN. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x) // halves go up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r
}
