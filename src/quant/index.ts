/**
 * Quantization math (issue 4): pure functions over typed arrays, no I/O.
 * rtn.ts: the published round-to-nearest scheme (and groups); pack.ts: published int4 and ONNX
 * MatMulNBits layouts; dequant.ts: back to fp16/f32; calibrate.ts: activation-aware clipping and
 * input scaling (AWQ); error.ts: layer and end-to-end error measures.
 */
export * from './calibrate.js'
export * from './dequant.js'
export * from './error.js'
export * from './fp16.js'
export * from './pack.js'
export * from './rtn.js'
