/**
 * PEFT's `target_modules` may be one regex, matched with Python's `re.fullmatch` against every
 * module name. JavaScript's engine backtracks, so a pattern such as `(a+)+b` or `(x|x)*y` takes
 * exponential time (ReDoS): a 100-byte adapter_config.json hung merge-adapter for minutes.
 *
 * Rather than a second regex engine (a linear-time one, re2 or a port, would be a new
 * dependency), patterns are screened for what makes backtracking blow up, and refused with a
 * message that says why:
 * - a repeated group (`*`, `+`, `{n,}`, `{n,m}` with m > 1) that itself holds a repetition or
 *   an alternation: the exponential cases, `(a+)+`, `(a|ab)*`;
 * - more than MAX_REPEATS repetitions in all (`.*.*.*.*.*x` is polynomial of that degree);
 * - backreferences and lookarounds (no linear-time guarantee at all; PEFT configs never use them);
 * - patterns longer than MAX_PATTERN.
 * What passes runs in at most O(n^MAX_REPEATS) on a module name of n characters, and module
 * names are the base architecture's (under 80 characters), so matching stays well under a second.
 * Real PEFT patterns (`.*\.(query_key_value|dense)`, `.*layers\.\d+\.mlp\..*`) pass.
 */

export const MAX_REPEATS = 4
export const MAX_PATTERN = 512

/** Why `pattern` could backtrack badly, or undefined when it is safe to run. */
export function unsafeRegexReason(pattern: string): string | undefined {
  if (pattern.length > MAX_PATTERN) return `it is ${pattern.length} characters long (at most ${MAX_PATTERN})`
  interface Group { repeats: boolean, alternates: boolean }
  const groups: Group[] = [{repeats: false, alternates: false}]
  let repeats = 0
  /** Length of the quantifier at i (0 when none) and whether it repeats more than once. */
  const quantifier = (i: number): {len: number, repeating: boolean} => {
    const c = pattern[i]
    let len = 0
    let repeating = false
    if (c === '*' || c === '+') {
      len = 1
      repeating = true
    } else if (c === '?') {
      len = 1
    } else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i))
      if (!m) return {len: 0, repeating: false}
      len = m[0].length
      repeating = m[2] !== undefined ? (m[3] === '' || Number(m[3]) > 1) : Number(m[1]) > 1
    }
    if (len && pattern[i + len] === '?') len++ // lazy: same cost
    return {len, repeating}
  }
  let i = 0
  while (i < pattern.length) {
    const c = pattern[i]
    let atomEnd = i + 1
    let closed: Group | undefined
    if (c === '\\') {
      const next = pattern[i + 1] ?? ''
      if (/[1-9]/.test(next) || next === 'k') return 'it uses a backreference'
      atomEnd = i + 2
    } else if (c === '[') {
      // A character class is one atom: skip to its closing bracket (a leading ] is literal).
      let j = i + 1
      if (pattern[j] === '^') j++
      if (pattern[j] === ']') j++
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : 1
      atomEnd = j + 1
    } else if (c === '(') {
      if (/^\(\?<?[=!]/.test(pattern.slice(i))) return 'it uses a lookahead or lookbehind'
      groups.push({repeats: false, alternates: false})
      i += pattern.startsWith('(?:', i) ? 3 : /^\(\?<[A-Za-z_]/.test(pattern.slice(i)) ? pattern.indexOf('>', i) + 1 || i + 1 : 1
      continue
    } else if (c === ')') {
      closed = groups.pop()
      if (!closed || groups.length === 0) return undefined // unbalanced: RegExp reports it
    } else if (c === '|') {
      groups[groups.length - 1].alternates = true
      i++
      continue
    }
    const q = quantifier(atomEnd)
    const parent = groups[groups.length - 1]
    if (q.repeating) {
      if (closed && (closed.repeats || closed.alternates)) {
        return `a repeated group holds ${closed.repeats ? 'a repetition' : 'an alternation'} (nested quantifiers backtrack exponentially)`
      }
      if (++repeats > MAX_REPEATS) return `it has more than ${MAX_REPEATS} repetitions (*, +, {n,})`
      parent.repeats = true
    }
    if (closed?.repeats) parent.repeats = true
    if (closed?.alternates) parent.alternates = true
    i = atomEnd + q.len
  }
  return undefined
}
