/**
 * Element types glmtool handles, named as safetensors names them (docs/formats.md), with the mapping
 * to torch storage classes and the byte size of one element.
 */
export type DType = 'F16' | 'BF16' | 'F32' | 'F64' | 'I8' | 'U8' | 'I16' | 'I32' | 'I64' | 'BOOL'

export const DTYPE_SIZE: Record<DType, number> = {
  F16: 2, BF16: 2, F32: 4, F64: 8, I8: 1, U8: 1, I16: 2, I32: 4, I64: 8, BOOL: 1,
}

/** torch storage class (the GLOBAL in a checkpoint's pickle) -> dtype. */
export const TORCH_STORAGE_DTYPE: Record<string, DType> = {
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  ShortStorage: 'I16',
  IntStorage: 'I32',
  LongStorage: 'I64',
  BoolStorage: 'BOOL',
}

/** dtype -> torch storage class name, for writing checkpoints. */
export const DTYPE_TORCH_STORAGE: Record<DType, string> = Object.fromEntries(
  Object.entries(TORCH_STORAGE_DTYPE).map(([k, v]) => [v, k]),
) as Record<DType, string>

/** torch dtype attribute names (`torch.float16`, as _rebuild_tensor_v3 passes them) -> dtype. */
export const TORCH_DTYPE_NAME: Record<string, DType> = {
  float16: 'F16', half: 'F16', bfloat16: 'BF16', float32: 'F32', float: 'F32', float64: 'F64',
  double: 'F64', int8: 'I8', uint8: 'U8', int16: 'I16', short: 'I16', int32: 'I32', int: 'I32',
  int64: 'I64', long: 'I64', bool: 'BOOL',
}

export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZE, s)
}

export function isFloat(d: DType): boolean {
  return d === 'F16' || d === 'BF16' || d === 'F32' || d === 'F64'
}

export function numel(shape: readonly number[]): number {
  let n = 1
  for (const s of shape) n *= s
  return n
}

export function byteLength(dtype: DType, shape: readonly number[]): number {
  return numel(shape) * DTYPE_SIZE[dtype]
}

/** dtype -> config.json's `torch_dtype` value, for the float dtypes a checkpoint is stored in. */
export const TORCH_DTYPE_OF: Partial<Record<DType, string>> = {F16: 'float16', BF16: 'bfloat16', F32: 'float32'}
