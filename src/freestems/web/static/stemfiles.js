// The files of a separation on the device, written while it runs: one zip (stored, as the result card takes
// a server's) of a 16-bit WAV file per stem, laid out in one ArrayBuffer when the first block arrives, each
// block's samples written into it (and its checksums carried on) as the worker finishes the block. So the
// page keeps no float copy of the stems for the files (the live player keeps the one it plays, which the
// result player takes over) and no second copy of the files: that buffer is the archive.
import { wavBytes, writeWavHeader, writeWavSamples } from "./mixdown.js";
import { crc32, StoredZip } from "./zip.js";

export class StemFiles {
  /** `names`: the stems, in the blocks' order; `channels` and `frames` of each; `sampleRate`. */
  constructor(names, channels, frames, sampleRate) {
    const size = wavBytes(channels, frames);
    this.zip = new StoredZip(names.map((name) => ({ name: `${name}.wav`, size })));
    this.channels = channels;
    this.frames = frames;
    this.written = 0;
    this.files = names.map((name, s) => this.zip.data(s));
    this.crcs = this.files.map((file) => {
      writeWavHeader(new DataView(file.buffer, file.byteOffset, file.byteLength), channels, frames, sampleRate);
      return crc32(file.subarray(0, 44));
    });
  }

  /** The next frames of every stem, from `from`: `blocks` is [[Float32Array per channel] per stem]. */
  write(from, blocks) {
    const count = blocks[0][0].length;
    if (from !== this.written || from + count > this.frames || blocks.length !== this.files.length) {
      throw new Error(`a block of the stems came out of order (frames ${from} to ${from + count} after ${this.written})`);
    }
    blocks.forEach((channels, s) => {
      const file = this.files[s];
      writeWavSamples(new DataView(file.buffer, file.byteOffset, file.byteLength), from, channels);
      const start = 44 + from * this.channels * 2;
      this.crcs[s] = crc32(file.subarray(start, start + count * this.channels * 2), this.crcs[s]);
    });
    this.written += count;
  }

  /** The zip (an ArrayBuffer) once every frame is written; the writer lets go of it. */
  archive() {
    if (this.written !== this.frames) throw new Error(`the stems stopped at frame ${this.written} of ${this.frames}`);
    this.crcs.forEach((crc, s) => this.zip.setCrc(s, crc));
    const buffer = this.zip.buffer;
    this.zip = null;
    this.files = null;
    return buffer;
  }
}
