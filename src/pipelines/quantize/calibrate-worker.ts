/**
 * Worker thread of calibrate-pool.ts: calibrates one unit (calibrated-unit.ts quantizeUnit) of
 * a model it opens itself (kept open between jobs), and posts back the unit's tensors and
 * report lines (or the error, by message and code).
 */
import {parentPort} from 'node:worker_threads'
import {GlmtoolError} from '../../errors.js'
import {type ModelSource, openModel} from '../model-dir.js'
import type {TensorEntry} from '../../formats/tensor.js'
import {quantizeUnit} from './calibrated-unit.js'
import {calibrationUnits} from '../../quant/calibration-plan.js'
import type {UnitJob} from './calibrate-pool.js'

let open: {path: string, model: ModelSource, byName: Map<string, TensorEntry>} | undefined

parentPort!.on('message', async (job: UnitJob) => {
  try {
    if (open?.path !== job.model) {
      await open?.model.close()
      const model = await openModel(job.model)
      open = {path: job.model, model, byName: new Map(model.tensors.map(t => [t.name, t]))}
    }
    const units = calibrationUnits(open.model.arch!, open.model.config!, job.lmHead)
    const r = await quantizeUnit(units[job.unit], open.byName, new Map(Object.entries(job.stats)), job.opts)
    parentPort!.postMessage({id: job.id, tensors: [...r.tensors], reports: r.reports})
  } catch (error) {
    const e = error as Error
    parentPort!.postMessage({id: job.id, error: {message: e.message, code: e instanceof GlmtoolError ? e.code : 'quant-worker'}})
  }
})
