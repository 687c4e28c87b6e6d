import {UsageError} from '../errors.js'

/**
 * Byte multipliers for `--max-shard-size`. Decimal units follow transformers'
 * `convert_file_size_to_int` (GB = 10^9), binary units are explicit (GiB = 2^30).
 */
const UNITS: Record<string, bigint> = {
  '': 1n, B: 1n,
  KB: 10n ** 3n, MB: 10n ** 6n, GB: 10n ** 9n, TB: 10n ** 12n,
  KIB: 1n << 10n, MIB: 1n << 20n, GIB: 1n << 30n, TIB: 1n << 40n,
}

const SIZE_RE = /^\s*(\d+)(?:\.(\d+))?\s*([a-z]*)\s*$/i

/**
 * Parse a size such as "4GB", "500MB", "2GiB", "1.5GB" or "123" into bytes. Units are
 * case-insensitive. The result must be a whole number of bytes within Number's safe range;
 * anything else is a UsageError naming the input.
 */
export function parseSize(input: string): number {
  const m = SIZE_RE.exec(input)
  const unit = m ? UNITS[m[3].toUpperCase()] : undefined
  if (!m || unit === undefined) {
    throw new UsageError(`invalid size "${input}": expected a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "4GB" or "2GiB"`)
  }
  // Exact decimal arithmetic: "1.1GB" must be 1100000000, not 1100000000.0000002.
  const frac = m[2] ?? ''
  const scaled = BigInt(m[1] + frac) * unit
  const denom = 10n ** BigInt(frac.length)
  if (scaled % denom !== 0n) throw new UsageError(`invalid size "${input}": not a whole number of bytes`)
  const bytes = scaled / denom
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`invalid size "${input}": too large`)
  return Number(bytes)
}
