import {expect} from 'vitest'

/**
 * Run `check` over all items (it returns a description of the mismatch, or null), report the
 * counts, and fail listing the first 5 mismatches if there are any.
 */
export function parity<T>(label: string, items: T[], check: (item: T) => string | null): void {
  const failures: string[] = []
  let bad = 0
  for (const item of items) {
    const failure = check(item)
    if (failure !== null && bad++ < 5) failures.push(failure)
  }
  console.log(`${label}: ${items.length} compared, ${bad} mismatches`)
  expect(failures).toEqual([])
  expect(bad).toBe(0)
}
