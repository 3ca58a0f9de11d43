// "Export my mix": the stems with the mix as it is set now (mute, solo, each stem's volume) rendered in
// the browser by an OfflineAudioContext, the same graph as the player's, into a 16-bit WAV file. The master
// volume is how loud one listens, not part of the mix: it is left out. Nothing is uploaded. The 16-bit WAV
// writing is shared with a separation on the device, which writes its stems' files block by block.
import { $ } from "./dom.js";
import { formatBytes } from "./text.js";

/**
 * Renders `mixer`'s stems at their target gains: an AudioBuffer (stereo, the stems' rate and length). A stem
 * switched to B (compare.js) is rendered as heard: its alternate.
 */
export async function renderMix(mixer) {
  const first = mixer.stems[0].buffer;
  const length = mixer.stems.reduce((most, stem) => Math.max(most, stem.buffer.length), 0);
  const offline = new OfflineAudioContext(2, length, first.sampleRate);
  const targets = mixer.targets();
  for (const stem of mixer.stems) {
    if (targets[stem.name] === 0) continue;
    const source = offline.createBufferSource();
    source.buffer = stem.alternate && stem.choice === "b" ? stem.alternate.buffer : stem.buffer;
    const gain = offline.createGain();
    gain.gain.value = targets[stem.name];
    source.connect(gain).connect(offline.destination);
    source.start(0);
  }
  return offline.startRendering();
}

/** A 16-bit PCM WAV (a Blob) of `buffer`: samples scaled by 32768, rounded, clipped. */
export function wavBlob(buffer) {
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c += 1) channels.push(buffer.getChannelData(c));
  const bytes = new DataView(new ArrayBuffer(wavBytes(channels.length, buffer.length)));
  writeWavHeader(bytes, channels.length, buffer.length, buffer.sampleRate);
  writeWavSamples(bytes, 0, channels);
  return new Blob([bytes], { type: "audio/wav" });
}

/** The size of a 16-bit PCM WAV file of `frames` frames of `channels` channels. */
export function wavBytes(channels, frames) {
  return 44 + frames * channels * 2;
}

/** The 44-byte header of a 16-bit PCM WAV file, at the start of `bytes` (a DataView). */
export function writeWavHeader(bytes, channels, frames, sampleRate) {
  const text = (at, words) => [...words].forEach((letter, i) => bytes.setUint8(at + i, letter.charCodeAt(0)));
  text(0, "RIFF");
  bytes.setUint32(4, 36 + frames * channels * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  bytes.setUint32(16, 16, true);
  bytes.setUint16(20, 1, true); // PCM
  bytes.setUint16(22, channels, true);
  bytes.setUint32(24, sampleRate, true);
  bytes.setUint32(28, sampleRate * channels * 2, true);
  bytes.setUint16(32, channels * 2, true);
  bytes.setUint16(34, 16, true);
  text(36, "data");
  bytes.setUint32(40, frames * channels * 2, true);
}

/**
 * Writes `data` (a Float32Array per channel, of equal lengths) into the WAV file `bytes` (a DataView) from
 * frame `from` on, interleaved: samples scaled by 32768, rounded, clipped.
 */
export function writeWavSamples(bytes, from, data) {
  const channels = data.length;
  const frames = data[0].length;
  let at = 44 + from * channels * 2;
  for (let i = 0; i < frames; i += 1) {
    for (let c = 0; c < channels; c += 1) {
      const value = Math.round(data[c][i] * 32768);
      bytes.setInt16(at, Math.max(-32768, Math.min(32767, value)), true);
      at += 2;
    }
  }
}

/** The "Export my mix" button: `mixer()` is the player's mixer, `songName()` the song's base name. */
export function wireExport({ mixer, songName, log }) {
  const button = $("export-mix");
  button.addEventListener("click", async () => {
    const current = mixer();
    if (!current || current.live) return;
    button.disabled = true;
    $("export-status").textContent = "Rendering your mix…";
    try {
      const blob = wavBlob(await renderMix(current));
      const address = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = address;
      link.download = `${songName()} - my mix.wav`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(address), 60000);
      $("export-status").textContent = `Your mix is saved as ${link.download} (${formatBytes(blob.size)}).`;
      log("exported", { bytes: blob.size, targets: current.targets() });
    } catch (error) {
      $("export-status").textContent = `Your mix could not be rendered in this browser (${error.message}).`;
    } finally {
      button.disabled = false;
    }
  });
}
