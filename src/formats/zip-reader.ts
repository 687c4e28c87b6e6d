import zlib from 'node:zlib'
import yauzl from 'yauzl'
import {TorchFormatError} from '../errors.js'

/** CRC-32 (the zip polynomial) continuing from `crc`: zlib's, as zip-writer.ts uses. */
export const crc32 = (data: Uint8Array, crc: number): number => zlib.crc32(data, crc)

/** One STORED entry of a zip archive, located by the absolute file offset of its bytes. */
export interface ZipEntry {
  readonly name: string
  readonly dataOffset: number
  readonly size: number
  readonly crc32: number
}

/**
 * The central directory of a zip archive (zip64 included), read with yauzl. We only need the
 * byte range of each entry: torch checkpoints store entries uncompressed, and we read tensor bytes
 * straight from those ranges with positional reads instead of through yauzl's streams.
 */
export async function readZipIndex(path: string): Promise<Map<string, ZipEntry>> {
  let zip: yauzl.ZipFile
  try {
    zip = await new Promise<yauzl.ZipFile>((resolve, reject) =>
      yauzl.open(path, {lazyEntries: true, autoClose: false}, (err, z) => (err ? reject(err) : resolve(z))),
    )
  } catch (error) {
    throw new TorchFormatError(`${path}: not a readable zip archive (${(error as Error).message})`, 'zip-corrupt')
  }
  const entries = new Map<string, ZipEntry>()
  try {
    const raw: yauzl.Entry[] = await new Promise((resolve, reject) => {
      const list: yauzl.Entry[] = []
      zip.on('entry', (e: yauzl.Entry) => {
        list.push(e)
        zip.readEntry()
      })
      zip.on('end', () => resolve(list))
      zip.on('error', reject)
      zip.readEntry()
    })
    for (const e of raw) {
      // Two entries of one name: readers disagree on which wins, so a file can show a checker one
      // tensor and a loader another. Refuse rather than pick.
      if (entries.has(e.fileName)) throw new TorchFormatError(`${path}: zip entry ${e.fileName} appears twice`, 'zip-duplicate')
      if (e.compressionMethod !== 0) {
        throw new TorchFormatError(`${path}: entry ${e.fileName} is compressed (method ${e.compressionMethod}); torch checkpoints store entries uncompressed`, 'zip-compressed')
      }
      const header = await new Promise<{fileDataStart: number}>((resolve, reject) =>
        zip.readLocalFileHeader(e, {minimal: true}, (err, h) => (err ? reject(err) : resolve(h))),
      )
      entries.set(e.fileName, {name: e.fileName, dataOffset: header.fileDataStart, size: e.uncompressedSize, crc32: e.crc32})
    }
  } catch (error) {
    if (error instanceof TorchFormatError) throw error
    throw new TorchFormatError(`${path}: corrupt zip archive (${(error as Error).message})`, 'zip-corrupt')
  } finally {
    zip.close()
  }
  return entries
}
