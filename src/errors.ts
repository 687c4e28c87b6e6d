/**
 * Every failure glmtool reports to a user is a GlmtoolError: the CLI prints its message as one
 * line and exits non-zero. Subclasses name the failure kind (as the safetensors crate does), and
 * messages name the file and, where there is one, the tensor.
 */
export class GlmtoolError extends Error {
  /** Stable machine-readable kind, printed with --json errors and matched in tests. */
  readonly code: string

  constructor(code: string, message: string) {
    super(message)
    this.code = code
    this.name = new.target.name
  }
}

/** A zip-format torch.save file that is truncated, corrupt or not what it claims. */
export class TorchFormatError extends GlmtoolError {
  constructor(message: string, code = 'torch-format') {
    super(code, message)
  }
}

/** A pickle asked for something outside the allowlist; nothing was executed. */
export class PickleSecurityError extends GlmtoolError {
  constructor(message: string) {
    super('pickle-forbidden', message)
  }
}

/** A safetensors file breaking one of the format's rules (docs/formats.md). */
export class SafetensorsError extends GlmtoolError {
  constructor(code: string, message: string) {
    super(`safetensors-${code}`, message)
  }
}

/** A model directory that is incomplete or inconsistent (config, index, tensors). */
export class ModelError extends GlmtoolError {
  constructor(message: string, code = 'model') {
    super(code, message)
  }
}

/** Bad command-line input: conflicting flags, an output that exists, ... */
export class UsageError extends GlmtoolError {
  constructor(message: string) {
    super('usage', message)
  }
}

/** Ctrl-C / SIGTERM stopped the run; the CLI exits 130 / 143 as a shell does for the signal. */
export class InterruptedError extends GlmtoolError {
  readonly signal: NodeJS.Signals
  readonly exitCode: number

  constructor(signal: NodeJS.Signals, message: string) {
    super('interrupted', message)
    this.signal = signal
    this.exitCode = signal === 'SIGINT' ? 130 : 143
  }
}

/**
 * Run `fn`, giving any system error it throws without a path (a read or write on an open
 * handle: ENOSPC, EISDIR, EIO) the path it was about, so the one-line message can name it.
 */
export async function withPath<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (error) {
    const e = error as NodeJS.ErrnoException
    if (!(error instanceof GlmtoolError) && typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code) && !e.path) e.path = path
    throw error
  }
}
