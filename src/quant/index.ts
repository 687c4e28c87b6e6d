/**
 * Quantization math (issue 4): pure functions over typed arrays, no I/O.
 * rtn.ts: the published round-to-nearest scheme (and groups); rtn-rows.ts: the same, fast, over
 * row blocks straight into the published tensors; pack.ts: published int4 and ONNX MatMulNBits
 * layouts; dequant.ts: back to fp16/f32; calibrate.ts: activation-aware clipping and input
 * scaling (AWQ); error.ts: layer and end-to-end error measures.
 *
 * `glmtool quantize` itself (I/O, workers, onnxruntime) is built on these, outside this index:
 * quantize-model.ts (the pipeline), quantized-tensors.ts + rtn-pool.ts + rtn-worker.ts (streaming
 * RTN on worker threads), calibration-plan.ts (where each generation can fold input scales),
 * calibrated-unit.ts (AWQ per layer), calibration-data.ts + calibration-text.ts (text ->
 * sequences), activation-stats.ts (linear input statistics from onnxruntime), evaluate.ts (KL and
 * top-1 against the float model).
 */
export * from './calibrate.js'
export * from './dequant.js'
export * from './error.js'
export * from './fp16.js'
export * from './pack.js'
export * from './rtn.js'
export * from './rtn-rows.js'
