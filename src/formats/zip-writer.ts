import {crc32} from 'node:zlib'
import type {FileHandle} from 'node:fs/promises'
import {withPath} from '../errors.js'

/**
 * A writer of uncompressed (STORED) zip archives laid out as torch.save lays them out
 * (docs/formats.md): each entry's data starts on a 64-byte boundary, padded through the local
 * header's extra field, and zip64 records are used once sizes or offsets pass 4 GiB.
 *
 * Written by hand because the maintained zip writers (yazl, archiver) cannot pad the local
 * extra field for alignment, and torch's mmap loading relies on it. Entries are streamed:
 * the data is written as it arrives and the CRC patched into the local header afterwards, so a
 * multi-GB storage never sits in memory.
 */

const ALIGN = 64
const MAX32 = 0xffffffff
const ZIP64_EXTRA = 0x0001
const PAD_EXTRA = 0x4646 // 'FF', the id torch's writer uses for its padding field

interface WrittenEntry {
  name: Buffer
  offset: number
  size: number
  crc: number
}

export class ZipWriter {
  private pos = 0
  private readonly entries: WrittenEntry[] = []

  /** `path` names the file in system errors (a failed write carries no path of its own). */
  constructor(private readonly fh: FileHandle, private readonly forceZip64 = false, private readonly path = '<zip>') {}

  private async write(buf: Buffer): Promise<void> {
    await withPath(this.path, async () => {
      let done = 0
      while (done < buf.length) {
        const {bytesWritten} = await this.fh.write(buf, done, buf.length - done, this.pos + done)
        done += bytesWritten
      }
    })
    this.pos += buf.length
  }

  /** Add one entry whose size is known up front; its bytes come from `data`. */
  async addEntry(name: string, size: number, data: AsyncIterable<Buffer> | Buffer): Promise<void> {
    const nameBuf = Buffer.from(name, 'utf8')
    const offset = this.pos
    const zip64 = this.forceZip64 || size >= MAX32
    // Local header: 30 bytes + name + extra (zip64 sizes when needed, then padding to 64).
    const zip64Len = zip64 ? 20 : 0
    const padLen = (ALIGN - ((offset + 30 + nameBuf.length + zip64Len + 4) % ALIGN)) % ALIGN
    const extraLen = zip64Len + 4 + padLen
    const header = Buffer.alloc(30 + nameBuf.length + extraLen)
    header.writeUInt32LE(0x04034b50, 0)
    header.writeUInt16LE(zip64 ? 45 : 20, 4) // version needed
    header.writeUInt16LE(0x0800, 6) // UTF-8 names
    header.writeUInt16LE(0, 8) // STORED
    header.writeUInt32LE(0, 10) // time/date: fixed, so output is reproducible
    header.writeUInt32LE(0, 14) // CRC, patched below
    header.writeUInt32LE(zip64 ? MAX32 : size, 18)
    header.writeUInt32LE(zip64 ? MAX32 : size, 22)
    header.writeUInt16LE(nameBuf.length, 26)
    header.writeUInt16LE(extraLen, 28)
    nameBuf.copy(header, 30)
    let e = 30 + nameBuf.length
    if (zip64) {
      header.writeUInt16LE(ZIP64_EXTRA, e)
      header.writeUInt16LE(16, e + 2)
      header.writeBigUInt64LE(BigInt(size), e + 4)
      header.writeBigUInt64LE(BigInt(size), e + 12)
      e += 20
    }
    header.writeUInt16LE(PAD_EXTRA, e)
    header.writeUInt16LE(padLen, e + 2)
    await this.write(header)
    let crc = 0
    let written = 0
    const pieces = Buffer.isBuffer(data) ? [data] : data
    for await (const piece of pieces) {
      crc = crc32(piece, crc)
      written += piece.length
      await this.write(piece)
    }
    if (written !== size) throw new Error(`zip entry ${name}: expected ${size} bytes, got ${written}`)
    const crcBuf = Buffer.alloc(4)
    crcBuf.writeUInt32LE(crc >>> 0, 0)
    await withPath(this.path, () => this.fh.write(crcBuf, 0, 4, offset + 14))
    this.entries.push({name: nameBuf, offset, size, crc: crc >>> 0})
  }

  /** Write the central directory (and zip64 end records when needed). */
  async finish(): Promise<void> {
    const cdStart = this.pos
    for (const en of this.entries) {
      const needSize = this.forceZip64 || en.size >= MAX32
      const needOffset = this.forceZip64 || en.offset >= MAX32
      const z64: Buffer[] = []
      if (needSize) {
        const b = Buffer.alloc(16)
        b.writeBigUInt64LE(BigInt(en.size), 0)
        b.writeBigUInt64LE(BigInt(en.size), 8)
        z64.push(b)
      }
      if (needOffset) {
        const b = Buffer.alloc(8)
        b.writeBigUInt64LE(BigInt(en.offset), 0)
        z64.push(b)
      }
      const z64Data = Buffer.concat(z64)
      const extra = z64Data.length ? Buffer.concat([u16(ZIP64_EXTRA), u16(z64Data.length), z64Data]) : Buffer.alloc(0)
      const h = Buffer.alloc(46)
      h.writeUInt32LE(0x02014b50, 0)
      h.writeUInt16LE(needSize || needOffset ? 45 : 20, 4) // version made by
      h.writeUInt16LE(needSize || needOffset ? 45 : 20, 6) // version needed
      h.writeUInt16LE(0x0800, 8)
      h.writeUInt16LE(0, 10)
      h.writeUInt32LE(0, 12)
      h.writeUInt32LE(en.crc, 16)
      h.writeUInt32LE(needSize ? MAX32 : en.size, 20)
      h.writeUInt32LE(needSize ? MAX32 : en.size, 24)
      h.writeUInt16LE(en.name.length, 28)
      h.writeUInt16LE(extra.length, 30)
      h.writeUInt16LE(0, 32) // comment
      h.writeUInt16LE(0, 34) // disk
      h.writeUInt16LE(0, 36)
      h.writeUInt32LE(0, 38)
      h.writeUInt32LE(needOffset ? MAX32 : en.offset, 42)
      await this.write(Buffer.concat([h, en.name, extra]))
    }
    const cdSize = this.pos - cdStart
    const n = this.entries.length
    const zip64End = this.forceZip64 || cdStart >= MAX32 || n >= 0xffff || cdSize >= MAX32
    if (zip64End) {
      const recStart = this.pos
      const r = Buffer.alloc(56)
      r.writeUInt32LE(0x06064b50, 0)
      r.writeBigUInt64LE(44n, 4)
      r.writeUInt16LE(45, 12)
      r.writeUInt16LE(45, 14)
      r.writeUInt32LE(0, 16)
      r.writeUInt32LE(0, 20)
      r.writeBigUInt64LE(BigInt(n), 24)
      r.writeBigUInt64LE(BigInt(n), 32)
      r.writeBigUInt64LE(BigInt(cdSize), 40)
      r.writeBigUInt64LE(BigInt(cdStart), 48)
      const loc = Buffer.alloc(20)
      loc.writeUInt32LE(0x07064b50, 0)
      loc.writeUInt32LE(0, 4)
      loc.writeBigUInt64LE(BigInt(recStart), 8)
      loc.writeUInt32LE(1, 16)
      await this.write(Buffer.concat([r, loc]))
    }
    const end = Buffer.alloc(22)
    end.writeUInt32LE(0x06054b50, 0)
    end.writeUInt16LE(zip64End ? 0xffff : n, 8)
    end.writeUInt16LE(zip64End ? 0xffff : n, 10)
    end.writeUInt32LE(zip64End ? MAX32 : cdSize, 12)
    end.writeUInt32LE(zip64End ? MAX32 : cdStart, 16)
    await this.write(end)
  }
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16LE(v, 0)
  return b
}
