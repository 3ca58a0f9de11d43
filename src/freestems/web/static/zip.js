// A small ZIP reader for the result archive: entries STORED (MP3) or DEFLATED (WAV, FLAC), CRC-checked.
// Deflate is undone by the browser (DecompressionStream "deflate-raw"). And a writer that packs the same
// entries again under other names (the song's name, as single downloads have), their packed bytes and
// checksums as they came from the server: nothing is compressed or checked twice. And the frame of a zip of
// stored entries whose bytes are written into it afterwards (a separation on the device writes its WAV
// files there block by block: the archive is made without a copy).

const EOCD_SIGNATURE = 0x06054b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;

export class ZipError extends Error {}

let crcTable = null;

/** CRC-32 (IEEE, as in ZIP) of a Uint8Array; `crc`: the CRC of the bytes before it, to go on from. */
export function crc32(bytes, crc = 0) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n;
      for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  crc = (crc ^ 0xffffffff) >>> 0;
  for (let i = 0; i < bytes.length; i += 1) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** The entries of the archive's central directory: [{name, method, compressedSize, size, crc, offset}]. */
export function listEntries(buffer) {
  const view = new DataView(buffer);
  const bytes = new Uint8Array(buffer);
  // The end-of-central-directory record is the last 22 bytes, unless a comment (<= 64 KiB) follows it.
  let eocd = -1;
  for (let at = bytes.length - 22; at >= Math.max(0, bytes.length - 22 - 0xffff); at -= 1) {
    if (view.getUint32(at, true) === EOCD_SIGNATURE) {
      eocd = at;
      break;
    }
  }
  if (eocd < 0) throw new ZipError("the download is not a zip archive (it may be cut short)");
  const total = view.getUint16(eocd + 10, true);
  const directorySize = view.getUint32(eocd + 12, true);
  const directoryOffset = view.getUint32(eocd + 16, true);
  if (directoryOffset === 0xffffffff || total === 0xffff) throw new ZipError("ZIP64 archives are not supported");
  if (directoryOffset + directorySize > eocd) throw new ZipError("the zip archive is damaged");
  const decoder = new TextDecoder();
  const entries = [];
  let at = directoryOffset;
  for (let i = 0; i < total; i += 1) {
    if (view.getUint32(at, true) !== CENTRAL_SIGNATURE) throw new ZipError("the zip archive is damaged");
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    entries.push({
      name: decoder.decode(bytes.subarray(at + 46, at + 46 + nameLength)),
      method: view.getUint16(at + 10, true),
      crc: view.getUint32(at + 16, true),
      compressedSize: view.getUint32(at + 20, true),
      size: view.getUint32(at + 24, true),
      offset: view.getUint32(at + 42, true),
    });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

async function inflateRaw(data) {
  if (typeof DecompressionStream === "undefined") {
    throw new ZipError("this browser cannot unpack compressed files (no DecompressionStream); use Download all");
  }
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The files of the archive: [{name, data: Uint8Array}] in archive order (folders skipped). */
export async function readZip(buffer) {
  const view = new DataView(buffer);
  const files = [];
  for (const entry of listEntries(buffer)) {
    if (entry.name.endsWith("/")) continue;
    if (view.getUint32(entry.offset, true) !== LOCAL_SIGNATURE) throw new ZipError("the zip archive is damaged");
    const start = entry.offset + 30 + view.getUint16(entry.offset + 26, true) + view.getUint16(entry.offset + 28, true);
    if (start + entry.compressedSize > buffer.byteLength) throw new ZipError("the zip archive is cut short");
    const raw = new Uint8Array(buffer, start, entry.compressedSize);
    let data;
    if (entry.method === 0) data = raw; // a view: the archive's bytes are not copied
    else if (entry.method === 8) data = await inflateRaw(raw);
    else throw new ZipError(`${entry.name} is packed with an unsupported method (${entry.method})`);
    if (data.length !== entry.size || crc32(data) !== entry.crc) {
      throw new ZipError(`${entry.name} is damaged in the download (checksum mismatch); download it again`);
    }
    files.push({ name: entry.name, data, method: entry.method, crc: entry.crc, packed: entry.method === 0 ? data : raw.slice() });
  }
  return files;
}

/**
 * A zip (a Blob) of `entries` ({name, size, method, crc, packed}: as readZip gives them, with new names;
 * `packed` may be a Blob, which the zip then holds without a copy). Names are UTF-8 (flag bit 11); dates
 * are the DOS epoch, as the server's are.
 */
export function writeZip(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const directory = [];
  let offset = 0;
  for (const entry of entries) {
    const name = encoder.encode(entry.name);
    const local = new DataView(new ArrayBuffer(30));
    fillHeader(local, 4, entry, name.length);
    local.setUint32(0, LOCAL_SIGNATURE, true);
    parts.push(local, name, entry.packed);
    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, CENTRAL_SIGNATURE, true);
    central.setUint16(4, 20, true); // made by: version 2.0
    fillHeader(central, 6, entry, name.length);
    central.setUint32(42, offset, true);
    directory.push(central, name);
    offset += 30 + name.length + packedSize(entry);
  }
  const directorySize = directory.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, EOCD_SIGNATURE, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, directorySize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...directory, end], { type: "application/zip" });
}

/** The fields local and central headers share, from `at` (version needed .. name length). */
function fillHeader(view, at, entry, nameLength) {
  view.setUint16(at, 20, true); // version needed: 2.0
  view.setUint16(at + 2, 0x0800, true); // UTF-8 names
  view.setUint16(at + 4, entry.method, true);
  view.setUint16(at + 6, 0, true); // time
  view.setUint16(at + 8, 0x21, true); // date: 1980-01-01
  view.setUint32(at + 10, entry.crc, true);
  view.setUint32(at + 14, packedSize(entry), true);
  view.setUint32(at + 18, entry.size, true);
  view.setUint16(at + 22, nameLength, true);
}

function packedSize(entry) {
  return entry.packed instanceof Blob ? entry.packed.size : entry.packed.length;
}

/**
 * A zip of stored entries ({name, size}) laid out in one ArrayBuffer before their bytes exist: `data(i)`
 * is entry i's place (a Uint8Array of `size` bytes) to write into, `setCrc(i, crc)` gives its checksum
 * once written; `buffer` is then the archive, byte for byte what writeZip makes of the same entries.
 */
export class StoredZip {
  constructor(entries) {
    const encoder = new TextEncoder();
    const names = entries.map((entry) => encoder.encode(entry.name));
    const local = entries.reduce((sum, entry, i) => sum + 30 + names[i].length + entry.size, 0);
    const central = names.reduce((sum, name) => sum + 46 + name.length, 0);
    if (local + central + 22 > 0xffffffff) throw new ZipError("the stems are too long for one zip archive (over 4 GB)");
    this.buffer = new ArrayBuffer(local + central + 22);
    const view = new DataView(this.buffer);
    const bytes = new Uint8Array(this.buffer);
    this.starts = []; // where each entry's local header starts
    this.centrals = []; // and its central header
    let offset = 0;
    let at = local;
    entries.forEach((entry, i) => {
      const fields = { method: 0, crc: 0, size: entry.size, packed: { length: entry.size } };
      view.setUint32(offset, LOCAL_SIGNATURE, true);
      fillHeader(view, offset + 4, fields, names[i].length);
      bytes.set(names[i], offset + 30);
      view.setUint32(at, CENTRAL_SIGNATURE, true);
      view.setUint16(at + 4, 20, true); // made by: version 2.0
      fillHeader(view, at + 6, fields, names[i].length);
      view.setUint32(at + 42, offset, true);
      bytes.set(names[i], at + 46);
      this.starts.push(offset);
      this.centrals.push(at);
      offset += 30 + names[i].length + entry.size;
      at += 46 + names[i].length;
    });
    view.setUint32(at, EOCD_SIGNATURE, true);
    view.setUint16(at + 8, entries.length, true);
    view.setUint16(at + 10, entries.length, true);
    view.setUint32(at + 12, central, true);
    view.setUint32(at + 16, local, true);
    this.sizes = entries.map((entry) => entry.size);
    this.nameLengths = names.map((name) => name.length);
  }

  /** Entry `index`'s bytes in the archive, to be written. */
  data(index) {
    return new Uint8Array(this.buffer, this.starts[index] + 30 + this.nameLengths[index], this.sizes[index]);
  }

  setCrc(index, crc) {
    const view = new DataView(this.buffer);
    view.setUint32(this.starts[index] + 14, crc, true);
    view.setUint32(this.centrals[index] + 16, crc, true);
  }
}
