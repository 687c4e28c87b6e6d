import {PickleSecurityError, TorchFormatError} from '../errors.js'
import {type DType, TORCH_DTYPE_NAME, TORCH_STORAGE_DTYPE} from './dtype.js'
import {type PyCallable, PyDict, PyTuple, unpickle} from './pickle.js'

/** A storage record of a zip checkpoint: `<root>/data/<key>`, numel elements of dtype. */
export interface StorageRef {
  readonly key: string
  readonly dtype: DType
  readonly location: string
  readonly numel: number
}

/** A tensor as the pickle describes it: a strided view into a storage. */
export interface TensorRef {
  readonly storage: StorageRef
  readonly storageOffset: number
  readonly shape: number[]
  readonly stride: number[]
}

export function isTensorRef(v: unknown): v is TensorRef {
  return typeof v === 'object' && v !== null && 'storage' in v && 'stride' in v && 'shape' in v
}

class StorageClass {
  constructor(readonly name: string, readonly dtype: DType | undefined) {}
}

class DtypeValue {
  constructor(readonly dtype: DType) {}
}

const fn = (pyName: string, call: (args: unknown[]) => unknown): PyCallable => ({pyName, call})

function intList(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every(x => Number.isSafeInteger(x))) throw new TorchFormatError(`tensor ${what} is not a tuple of integers`, 'pickle-corrupt')
  return [...(v as number[])]
}

function rebuild(args: unknown[], dtypeOverride?: DType): TensorRef {
  const [storage, offset, size, stride] = args
  if (!(storage && typeof storage === 'object' && 'key' in storage)) throw new TorchFormatError('tensor rebuilt from something that is not a storage', 'pickle-corrupt')
  if (!Number.isSafeInteger(offset) || (offset as number) < 0) throw new TorchFormatError('tensor storage offset is not a non-negative integer', 'pickle-corrupt')
  let s = storage as StorageRef
  if (dtypeOverride && dtypeOverride !== s.dtype) s = {...s, dtype: dtypeOverride}
  const shape = intList(size, 'size')
  const strides = intList(stride, 'stride')
  if (shape.length !== strides.length) throw new TorchFormatError('tensor size and stride differ in length', 'pickle-corrupt')
  return {storage: s, storageOffset: offset as number, shape, stride: strides}
}

/**
 * The allowlist: every GLOBAL torch.save emits for a state dict (docs/formats.md), and nothing else.
 * Anything not here is refused by name before any later opcode runs.
 */
const ALLOWED: Record<string, unknown> = {
  'collections.OrderedDict': fn('collections.OrderedDict', () => new PyDict()),
  'torch._utils._rebuild_tensor': fn('_rebuild_tensor', args => rebuild(args)),
  'torch._utils._rebuild_tensor_v2': fn('_rebuild_tensor_v2', args => rebuild(args)),
  'torch._utils._rebuild_tensor_v3': fn('_rebuild_tensor_v3', args => {
    const d = args[6]
    if (!(d instanceof DtypeValue)) throw new TorchFormatError('_rebuild_tensor_v3 without a dtype', 'pickle-corrupt')
    return rebuild(args, d.dtype)
  }),
  'torch._utils._rebuild_parameter': fn('_rebuild_parameter', args => args[0]),
  'torch._utils._rebuild_parameter_with_state': fn('_rebuild_parameter_with_state', args => args[0]),
  'torch._tensor._rebuild_from_type_v2': fn('_rebuild_from_type_v2', args => {
    // (func, new_type, args, state): only ever rebuilds a plain tensor/parameter through func.
    const [inner, , innerArgs] = args
    if (!(inner && typeof inner === 'object' && 'call' in inner) || !Array.isArray(innerArgs)) throw new TorchFormatError('malformed _rebuild_from_type_v2', 'pickle-corrupt')
    return (inner as PyCallable).call(innerArgs)
  }),
  'torch.Size': fn('torch.Size', args => PyTuple.from((args[0] as unknown[]) ?? [])),
  'torch.Tensor': new StorageClass('Tensor', undefined),
  'torch.nn.parameter.Parameter': new StorageClass('Parameter', undefined),
  'torch.UntypedStorage': new StorageClass('UntypedStorage', 'U8'),
}
for (const [cls, dtype] of Object.entries(TORCH_STORAGE_DTYPE)) ALLOWED[`torch.${cls}`] = new StorageClass(cls, dtype)
for (const [name, dtype] of Object.entries(TORCH_DTYPE_NAME)) ALLOWED[`torch.${name}`] = new DtypeValue(dtype)

/**
 * Unpickle a checkpoint's data.pkl into name -> TensorRef. Nested dicts are flattened with
 * dots; non-tensor values (ints, strings, optimizer state) are counted in `ignored`.
 */
export function readStateDict(pkl: Buffer, source: string): {tensors: Map<string, TensorRef>, ignored: string[]} {
  const storages = new Map<string, StorageRef>()
  const result = unpickle(pkl, {
    resolveGlobal(module, name) {
      const v = ALLOWED[`${module}.${name}`]
      if (v === undefined) {
        throw new PickleSecurityError(`${source}: refusing pickle global ${module}.${name}: not a tensor or state-dict type, nothing was executed`)
      }
      return v
    },
    persistentLoad(pid) {
      if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw new TorchFormatError(`${source}: unsupported persistent id`, 'pickle-corrupt')
      const [, cls, key, location, numel] = pid
      if (!(cls instanceof StorageClass) || cls.dtype === undefined) throw new TorchFormatError(`${source}: persistent id names no storage type`, 'pickle-corrupt')
      if (typeof key !== 'string' || !/^[\w.-]+$/.test(key) || !Number.isSafeInteger(numel)) throw new TorchFormatError(`${source}: malformed storage id`, 'pickle-corrupt')
      const existing = storages.get(key)
      if (existing) return existing
      const ref: StorageRef = {key, dtype: cls.dtype, location: String(location), numel: numel as number}
      storages.set(key, ref)
      return ref
    },
  }, source)
  if (!(result instanceof PyDict)) throw new TorchFormatError(`${source}: the checkpoint does not hold a state dict`, 'not-state-dict')
  const tensors = new Map<string, TensorRef>()
  const ignored: string[] = []
  const walk = (d: PyDict, prefix: string) => {
    for (const [k, v] of d) {
      const name = prefix + String(k)
      if (isTensorRef(v)) tensors.set(name, v)
      else if (v instanceof PyDict) walk(v, `${name}.`)
      else ignored.push(name)
    }
  }
  walk(result, '')
  return {tensors, ignored}
}
