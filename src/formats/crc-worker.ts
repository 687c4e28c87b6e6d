import {availableParallelism} from 'node:os'
import {Worker} from 'node:worker_threads'
import zlib from 'node:zlib'

/**
 * CRC-32 on worker threads, so checking a zip record costs no time on the thread that streams
 * it. zlib.crc32 runs at ~0.6-0.9 GB/s on the dev VM and ~3.5 GB/s on the H200 host: done inline
 * it made a full-size convert ~1.46x slower, and on one worker it still cost ~9.5% on a
 * 16-core machine whose page cache makes reads and writes memory copies (bench/RESULTS.md). So
 * a large piece is split over a few workers and the parts' CRCs joined with crc32Combine.
 * Pieces must live in shared memory (SharedArrayBuffer): the workers read them in place,
 * nothing is copied.
 */
const SOURCE = `
const {parentPort} = require('node:worker_threads')
const zlib = require('node:zlib')
parentPort.on('message', m => parentPort.postMessage({id: m.id, crc: zlib.crc32(m.data, 0)}))
`

/** Below this a piece is cheaper to check inline than to send. */
const INLINE_BYTES = 1 << 20
/** Each worker gets at least this much of a piece. */
const PART_BYTES = 4 << 20
/** Workers: the cores left beside the streaming thread, at most 4 (more buy nothing, bench/RESULTS.md). */
const MAX_WORKERS = Math.max(1, Math.min(4, availableParallelism() - 1))

let workers: Worker[] | undefined
let broken = false
let nextId = 0
const waiting = new Map<number, {resolve: (crc: number) => void, reject: (e: Error) => void}>()

function getWorkers(): Worker[] | undefined {
  if (workers || broken) return workers
  try {
    const pool: Worker[] = []
    const fail = (error: Error) => {
      broken = true
      for (const w of pool) void w.terminate()
      workers = undefined
      for (const p of waiting.values()) p.reject(error)
      waiting.clear()
    }
    for (let i = 0; i < MAX_WORKERS; i++) {
      const w = new Worker(SOURCE, {eval: true})
      w.on('message', (m: {id: number, crc: number}) => {
        const p = waiting.get(m.id)
        waiting.delete(m.id)
        if (waiting.size === 0) for (const x of pool) x.unref()
        p?.resolve(m.crc)
      })
      w.on('error', fail)
      w.on('exit', code => {
        if (!broken) fail(new Error(`CRC-32 worker exited (code ${code})`))
      })
      // Idle, they must not keep the process alive; while a piece is out, they do (ref below).
      w.unref()
      pool.push(w)
    }
    workers = pool
  } catch {
    broken = true
  }
  return workers
}

function onWorker(w: Worker, data: Uint8Array): Promise<number> {
  const id = nextId++
  if (waiting.size === 0) for (const x of workers!) x.ref()
  return new Promise((resolve, reject) => {
    waiting.set(id, {resolve, reject})
    w.postMessage({id, data})
  })
}

// zlib's crc32_combine, which Node does not expose: the CRC of A||B from crc(A), crc(B) and
// |B|, by applying |B| zero bits to crc(A) as powers of the CRC's GF(2) shift matrix.
function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]
  return sum >>> 0
}

function gf2Square(square: Uint32Array, mat: Uint32Array): void {
  for (let n = 0; n < 32; n++) square[n] = gf2Times(mat, mat[n])
}

/** CRC-32 of A followed by B, given crc32(A), crc32(B) and B's length in bytes. */
export function crc32Combine(crc1: number, crc2: number, len2: number): number {
  if (len2 <= 0) return crc1 >>> 0
  const even = new Uint32Array(32)
  const odd = new Uint32Array(32)
  odd[0] = 0xedb88320 // the reflected polynomial: one zero bit
  for (let n = 1; n < 32; n++) odd[n] = 1 << (n - 1)
  gf2Square(even, odd) // two zero bits
  gf2Square(odd, even) // four zero bits
  let c = crc1 >>> 0
  let len = len2
  // Each step squares the operator (one byte, two, four, ...) and applies it where len has a bit.
  for (;;) {
    gf2Square(even, odd)
    if (len % 2) c = gf2Times(even, c)
    len = Math.floor(len / 2)
    if (len === 0) break
    gf2Square(odd, even)
    if (len % 2) c = gf2Times(odd, c)
    len = Math.floor(len / 2)
    if (len === 0) break
  }
  return (c ^ crc2) >>> 0
}

/** CRC-32 of `data` continuing from `crc`: on the workers when `data` is shared memory, else inline. */
export async function crc32Async(data: Uint8Array, crc: number): Promise<number> {
  const pool = data.length >= INLINE_BYTES && data.buffer instanceof SharedArrayBuffer ? getWorkers() : undefined
  if (!pool) return zlib.crc32(data, crc)
  const parts = Math.max(1, Math.min(pool.length, Math.floor(data.length / PART_BYTES)))
  const size = Math.ceil(data.length / parts)
  const pieces = Array.from({length: parts}, (_, i) => data.subarray(i * size, Math.min(data.length, (i + 1) * size)))
  const crcs = await Promise.all(pieces.map((p, i) => onWorker(pool[i], p)))
  let c = crc >>> 0
  for (let i = 0; i < parts; i++) c = crc32Combine(c, crcs[i], pieces[i].length)
  return c
}
