import {Worker} from 'node:worker_threads'
import zlib from 'node:zlib'

/**
 * CRC-32 on a worker thread, so checking a zip record costs no time on the thread that
 * streams it. zlib.crc32 runs at ~0.6-0.9 GB/s here (Debian's zlib, no PCLMUL path): done
 * inline it made a full-size convert ~1.46x slower (bench/RESULTS.md); on a worker it
 * overlaps the write of the same piece. Pieces must live in shared memory (SharedArrayBuffer):
 * the worker reads them in place, nothing is copied. One worker per process, serving pieces
 * in the order sent, so a running CRC can be chained piece after piece.
 */
const SOURCE = `
const {parentPort} = require('node:worker_threads')
const zlib = require('node:zlib')
parentPort.on('message', m => parentPort.postMessage({id: m.id, crc: zlib.crc32(m.data, m.crc)}))
`

/** Below this a piece is cheaper to check inline than to send. */
const INLINE_BYTES = 1 << 20

let worker: Worker | undefined
let broken = false
let nextId = 0
const waiting = new Map<number, {resolve: (crc: number) => void, reject: (e: Error) => void}>()

function getWorker(): Worker | undefined {
  if (worker || broken) return worker
  try {
    const w = new Worker(SOURCE, {eval: true})
    w.on('message', (m: {id: number, crc: number}) => {
      const p = waiting.get(m.id)
      waiting.delete(m.id)
      if (waiting.size === 0) w.unref()
      p?.resolve(m.crc)
    })
    const fail = (error: Error) => {
      broken = true
      worker = undefined
      for (const p of waiting.values()) p.reject(error)
      waiting.clear()
    }
    w.on('error', fail)
    w.on('exit', code => fail(new Error(`CRC-32 worker exited (code ${code})`)))
    // Idle, it must not keep the process alive; while a piece is out, it does (ref below).
    w.unref()
    worker = w
  } catch {
    broken = true
  }
  return worker
}

/** CRC-32 of `data` continuing from `crc`: on the worker when `data` is shared memory, else inline. */
export function crc32Async(data: Uint8Array, crc: number): Promise<number> {
  const w = data.length >= INLINE_BYTES && data.buffer instanceof SharedArrayBuffer ? getWorker() : undefined
  if (!w) return Promise.resolve(zlib.crc32(data, crc))
  const id = nextId++
  if (waiting.size === 0) w.ref()
  return new Promise((resolve, reject) => {
    waiting.set(id, {resolve, reject})
    w.postMessage({id, data, crc})
  })
}
