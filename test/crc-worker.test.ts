/**
 * CRC-32 on worker threads (src/formats/crc-worker.ts): a shared-memory piece split over the
 * workers and joined with crc32Combine equals zlib.crc32 over the whole piece, from any
 * starting CRC; and the combine step alone equals zlib on random splits.
 */
import {randomBytes} from 'node:crypto'
import zlib from 'node:zlib'
import {describe, expect, it} from 'vitest'
import {crc32Async, crc32Combine} from '../src/formats/crc-worker.js'

function shared(bytes: Buffer): Uint8Array {
  const u = new Uint8Array(new SharedArrayBuffer(bytes.length))
  u.set(bytes)
  return u
}

describe('crc32Combine', () => {
  it('crc(A||B) from crc(A), crc(B) and |B|, for random splits and lengths 0..5e5', () => {
    const data = randomBytes(500_003)
    for (const cut of [0, 1, 7, 4096, 123_457, 499_999, 500_003]) {
      const a = data.subarray(0, cut)
      const b = data.subarray(cut)
      expect(crc32Combine(zlib.crc32(a), zlib.crc32(b), b.length)).toBe(zlib.crc32(data))
    }
  })
})

describe('crc32Async', () => {
  it('a shared piece split over the workers equals zlib.crc32, from a non-zero running CRC', async () => {
    for (const n of [(1 << 20) + 5, (9 << 20) + 3, 17 << 20]) {
      const bytes = randomBytes(n)
      const start = zlib.crc32(Buffer.from('previous piece'))
      expect(await crc32Async(shared(bytes), start)).toBe(zlib.crc32(bytes, start))
      // A view that starts inside the shared buffer.
      const view = shared(bytes).subarray(3, n - 2)
      expect(await crc32Async(view, 0)).toBe(zlib.crc32(bytes.subarray(3, n - 2)))
    }
  })

  it('a flipped bit changes it', async () => {
    const bytes = randomBytes(9 << 20)
    const good = await crc32Async(shared(bytes), 0)
    bytes[(7 << 20) + 11] ^= 4
    expect(await crc32Async(shared(bytes), 0)).not.toBe(good)
  })
})
