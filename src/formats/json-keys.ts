/**
 * Duplicate keys in JSON text. JSON.parse keeps the last of two equal keys silently, so a
 * safetensors header can show one reader one tensor and another reader another (the Rust
 * crate refuses a duplicate field). No JSON library we use reports duplicates, hence this
 * scanner: one pass, no recursion (depth costs one array slot), for text that JSON.parse has
 * already accepted, so it only has to find strings, colons and brackets.
 */

/** The path (`a.b`) of the first key that appears twice in one object, or undefined. */
export function findDuplicateKey(text: string): string | undefined {
  // One entry per open bracket: the keys seen so far in an object, null for an array.
  // Small objects (a tensor entry has three keys) keep an array: a Set per object costs more
  // than the scan itself on a million-tensor header.
  const open: ({keys: string[] | Set<string>, last: string} | null)[] = []
  let i = 0
  const n = text.length
  while (i < n) {
    const c = text.charCodeAt(i)
    if (c === 0x22) { // '"'
      let end = i + 1
      let escaped = false
      for (;;) {
        end = text.indexOf('"', end)
        if (end < 0) return undefined // not JSON.parse-valid text; nothing to say
        // The quote is escaped when an odd number of backslashes precede it.
        let k = end - 1
        while (text.charCodeAt(k) === 0x5c) k--
        if ((end - 1 - k) % 2 === 0) break
        escaped = true
        end++
      }
      const start = i + 1
      i = end + 1
      while (i < n && (text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x0a || text.charCodeAt(i) === 0x0d || text.charCodeAt(i) === 0x09)) i++
      const top = open[open.length - 1]
      if (text.charCodeAt(i) === 0x3a && top) { // ':' after a string inside an object: a key
        // Escapes are decoded, so "a" and "\u0061" are the same key, as for JSON.parse.
        const raw = text.slice(start, end)
        const key = escaped || raw.includes('\\') ? JSON.parse(`"${raw}"`) as string : raw
        const keys = top.keys
        if (Array.isArray(keys) ? keys.includes(key) : keys.has(key)) {
          return [...open.filter(o => o !== null).slice(0, -1).map(o => o!.last), key].join('.')
        }
        if (!Array.isArray(keys)) keys.add(key)
        else if (keys.length < 16) keys.push(key)
        else top.keys = new Set([...keys, key])
        top.last = key
      }
      continue
    }
    if (c === 0x7b) open.push({keys: [], last: ''})
    else if (c === 0x5b) open.push(null)
    else if (c === 0x7d || c === 0x5d) open.pop()
    i++
  }
  return undefined
}
