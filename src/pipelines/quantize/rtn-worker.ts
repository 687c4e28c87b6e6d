/**
 * Worker thread of rtn-pool.ts: quantizes a row range of a block in shared memory with
 * quantizeRowsPublished and posts back the error sums (or the error, by message and code).
 */
import {parentPort} from 'node:worker_threads'
import {GlmtoolError} from '../../errors.js'
import {quantizeRowsPublished} from '../../quant/rtn-rows.js'
import type {RowJob} from './rtn-pool.js'

parentPort!.on('message', (job: RowJob) => {
  try {
    const w = new Uint16Array(job.w, job.wByteOffset, job.rows * job.cols)
    const outW = new Int8Array(job.outW, job.outWByteOffset, job.bits === 4 ? job.rows * job.cols / 2 : job.rows * job.cols)
    const outS = new Uint16Array(job.outS, job.outSByteOffset, job.rows * job.cols / job.groupSize)
    const errors = quantizeRowsPublished(w, job.cols, job.r0, job.r1, job.groupSize, job.bits, outW, outS, job.meanSq, job.name, job.rowOffset)
    parentPort!.postMessage({id: job.id, errors})
  } catch (error) {
    const e = error as Error
    parentPort!.postMessage({id: job.id, error: {message: e.message, code: e instanceof GlmtoolError ? e.code : 'quant-worker'}})
  }
})
