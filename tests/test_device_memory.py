"""What a separation on the device keeps of the song: the stems' WAV files written block by block as the
worker finishes them (byte for byte the files ``wavBlob`` makes of the same floats, in a zip byte for byte
``writeZip``'s), the two-stem mode computed in the worker (it emits two stems, not four), the decoded song
handed to the worker rather than copied, and a page run that keeps no floats for tests giving in its
downloads the very stems that a run keeping them (compared with the engine elsewhere) gives. How much
memory that saves is measured by ``bench/bench_device_memory.py`` (docs/browser.md)."""

from __future__ import annotations

import base64
import io
import wave
import zipfile
from pathlib import Path

import numpy as np
from audio_samples import write_test_file
from test_device_separation import (  # noqa: F401 - `exported` is a fixture
    ENCODE,
    FINISHED,
    LAST_RUN,
    _floats,
    device_server,
    exported,
    music,
    needs_runtime,
)
from web_helpers import needs_chromium, wait_js

pytestmark = needs_chromium

# The floats in blocks of uneven sizes through StemFiles, then the zip read back; against wavBlob and
# writeZip of the same floats.
STEM_FILES = f"""async ({{frames, blocks, data}}) => {{
  {ENCODE}
  const {{ StemFiles }} = await import('/static/stemfiles.js');
  const {{ wavBlob }} = await import('/static/mixdown.js');
  const zip = await import('/static/zip.js');
  const bytes = (text) => Uint8Array.from(atob(text), (letter) => letter.charCodeAt(0));
  const decode = (text) => new Float32Array(bytes(text).buffer);
  const stems = data.map((channels) => channels.map(decode));
  const names = ['vocals', 'no_vocals'];
  const files = new StemFiles(names, 2, frames, 44100);
  let from = 0;
  for (const size of blocks) {{
    files.write(from, stems.map((channels) => channels.map((channel) => channel.slice(from, from + size))));
    from += size;
  }}
  let again = '';
  try {{
    files.write(0, stems.map((channels) => channels.map((channel) => channel.slice(0, 10))));
  }} catch (error) {{
    again = error.message;
  }}
  const archive = files.archive();
  const entries = await zip.readZip(archive);
  const equal = (a, b) => a.length === b.length && a.every((value, i) => value === b[i]);
  const expected = [];
  for (const channels of stems) {{
    const buffer = new AudioBuffer({{numberOfChannels: 2, length: frames, sampleRate: 44100}});
    channels.forEach((channel, c) => buffer.copyToChannel(channel, c));
    expected.push(new Uint8Array(await wavBlob(buffer).arrayBuffer()));
  }}
  const written = expected.map((file, i) => (
    {{name: `${{names[i]}}.wav`, method: 0, crc: zip.crc32(file), packed: file, size: file.length}}
  ));
  const whole = new Uint8Array(await zip.writeZip(written).arrayBuffer());
  return {{
    names: entries.map((entry) => entry.name),
    asWavBlob: entries.map((entry, i) => equal(entry.data, expected[i])),
    asWriteZip: equal(new Uint8Array(archive), whole),
    again,
    files: entries.map((entry) => encode(entry.data)),
  }};
}}"""


def reference_wav(channels: np.ndarray) -> bytes:
    """A 16-bit WAV of ``channels`` written by Python's ``wave``: x 32768, rounded half up (as JavaScript's
    Math.round), clipped."""
    samples = np.clip(np.floor(channels.astype(np.float64) * 32768 + 0.5), -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels.shape[0])
        writer.setsampwidth(2)
        writer.setframerate(44100)
        writer.writeframes(samples.T.tobytes())
    return out.getvalue()


def test_the_stems_wav_files_written_block_by_block_are_wavblobs_files_in_writezips_zip(open_page):
    rng = np.random.default_rng(7)
    frames = 20000
    stems = (0.4 * rng.standard_normal((2, 2, frames))).astype(np.float32)
    stems[0, 0, :6] = [1.5, -1.5, 32767.5 / 32768, -32768.5 / 32768, 2.5 / 32768, -2.5 / 32768]  # clips, ties
    data = [[base64.b64encode(channel.tobytes()).decode() for channel in stem] for stem in stems]
    page = open_page()
    got = page.evaluate(STEM_FILES, {"frames": frames, "blocks": [1, 4999, 7000, 8000], "data": data})
    assert got["names"] == ["vocals.wav", "no_vocals.wav"]
    assert got["asWavBlob"] == [True, True] and got["asWriteZip"] is True
    assert "out of order" in got["again"]
    for text, stem in zip(got["files"], stems, strict=True):
        assert base64.b64decode(text) == reference_wav(stem)


# The decoded song through the engine's worker as the page sends it (no copy kept), in two-stem mode.
TWO_STEMS = """async () => {
  const device = await import('/static/device.js');
  const tone = (c) => Float32Array.from({length: 3 * 44100}, (_, i) => 0.3 * Math.sin(i / (20 + 7 * c)));
  const channels = [tone(0), tone(1)];
  const blocks = [];
  const result = await device.separateOnDevice({
    model: 'small', channels, twoStems: 'vocals',
    on: (message) => message.type === 'block' && blocks.push(
      {names: message.names, stems: message.stems.length, from: message.from, to: message.to}
    ),
  });
  return {kept: channels.map((channel) => channel.length), stems: result.stems, names: result.names, blocks};
}"""


def _wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (2, 2, 44100)
        frames = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    return frames.reshape(-1, 2).T.astype(np.float64)


def karaoke_on_device(page, song: Path, keep: bool) -> None:
    wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
    page.evaluate(f"window.freestems.device.keep = {'true' if keep else 'false'}")
    page.check('input[name="where"][value="device"]')
    page.check('input[name="stems"][value="two"]')
    page.select_option("#two-stems", "vocals")
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    assert wait_js(page, FINISHED, timeout=240) == "result", page.evaluate("window.freestems.problem")


def downloads(page) -> dict[str, bytes]:
    """The result card's files as the person downloads them: each stem's, then "Download all"."""
    files = {}
    for selector in [*(f"#stems li[data-stem={name}] a[download]" for name in STEMS), "#download-all"]:
        with page.expect_download() as download:
            page.click(selector)
        files[download.value.suggested_filename] = Path(download.value.path()).read_bytes()
    return files


STEMS = ("vocals", "no_vocals")


@needs_runtime
def test_a_run_keeping_no_floats_writes_the_floats_wav_files_and_the_worker_emits_two_stems(
    exported,  # noqa: F811 - the fixture
    open_page,
    tmp_path,
):
    """The same karaoke run twice: as a person runs it (no floats kept: the files written block by block),
    then keeping the floats for tests (which test_device_separation compares with the engine): the first
    run's WAV files are the second's floats at 16 bits, sample for sample."""
    model, device_dir = exported
    song = tmp_path / "song.wav"
    write_test_file(song, "wav", seconds=6.0, signal=music(6.0))
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server)
        karaoke_on_device(page, song, keep=False)
        last = page.evaluate("window.freestems.device.last()")
        files = downloads(page)
        page.click("#again")
        karaoke_on_device(page, song, keep=True)
        kept = page.evaluate(LAST_RUN)
        direct = page.evaluate(TWO_STEMS)

    assert sorted(last) == ["info", "names"] and last["names"] == list(STEMS)  # no floats kept
    assert sorted(files) == ["song - no_vocals.wav", "song - stems.zip", "song - vocals.wav"]
    archive = zipfile.ZipFile(io.BytesIO(files.pop("song - stems.zip")))
    assert {info.filename: archive.read(info) for info in archive.infolist()} == files
    for name in STEMS:
        floats = _floats(kept["stems"][name]).astype(np.float64)
        assert floats.shape[1] == kept["info"]["length"] and np.abs(floats).max() > 0.01
        expected = np.clip(np.floor(floats * 32768 + 0.5), -32768, 32767)
        np.testing.assert_array_equal(_wav(files[f"song - {name}.wav"]), expected, err_msg=name)

    # The worker itself: two stems in every block, the song's arrays handed over (emptied in the page).
    assert direct["kept"] == [0, 0] and direct["stems"] is None
    assert direct["names"] == list(STEMS)
    pairs = {(tuple(block["names"]), block["stems"]) for block in direct["blocks"]}
    assert pairs == {(STEMS, 2)}
    assert direct["blocks"][-1]["to"] == 3 * 44100 and direct["blocks"][0]["from"] == 0
