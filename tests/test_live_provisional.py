"""The live player's provisional segments (a device run's short first chunk, docs/browser.md "First sound"):
heard at once, then replaced where playback is by the segment that covers them, with a short crossfade and
no doubling. Checked on a real AudioContext in headless Chromium: what the speakers get (an analyser on the
master gain), which sources stop, the segments and the waveform's peaks that remain."""

from __future__ import annotations

from web_helpers import needs_chromium

pytestmark = needs_chromium

# A provisional 3 s of 0.5 plays; 0.4 s in, a whole segment of 0.25 over [0, 6 s) replaces it.
REPLACE = """async () => {
  const { LiveMixer } = await import('/static/stream.js');
  const context = new AudioContext();
  await context.resume();
  const rate = context.sampleRate;
  const level = (seconds, value) => {
    const length = Math.round(seconds * rate);
    const buffer = new AudioBuffer({ numberOfChannels: 2, length, sampleRate: rate });
    buffer.getChannelData(0).fill(value);
    buffer.getChannelData(1).fill(value);
    return buffer;
  };
  const analyser = context.createAnalyser();
  const heard = () => {
    const data = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(data);
    return [Math.min(...data), Math.max(...data)];
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const mixer = new LiveMixer(context, { stems: ['vocals'], sampleRate: rate, totalSamples: 10 * rate });
  mixer.master.connect(analyser);
  mixer.addSegment({ start: 0, end: 3 * rate }, { vocals: level(3, 0.5) }, { provisional: true });
  await sleep(400);
  const before = { playing: mixer.playing, heard: heard(), peak: mixer.stems[0].peaks[1] };
  const provisional = mixer.sources.slice();
  const ended = [];
  for (const source of provisional) source.addEventListener('ended', () => ended.push(context.currentTime));
  const replacedAt = context.currentTime;
  mixer.addSegment({ start: 0, end: 6 * rate }, { vocals: level(6, 0.25) });
  await sleep(500);
  const after = {
    playing: mixer.playing,
    heard: heard(),
    peak: mixer.stems[0].peaks[1],
    segments: mixer.segments.map((entry) => [entry.start, entry.end, entry.provisional]),
    ended: ended.map((time) => time - replacedAt),
    provisional: provisional.length,
    position: mixer.position(),
  };
  await mixer.close();
  return { before, after };
}"""


def test_a_provisional_segment_is_replaced_where_it_plays(open_page):
    page = open_page()
    result = page.evaluate(REPLACE)
    before, after = result["before"], result["after"]
    assert before["playing"] is True
    assert before["heard"] == [0.5, 0.5] and before["peak"] == 0.5  # the provisional segment is heard
    assert after["playing"] is True and after["position"] > 0.5  # playback went on, it did not restart
    assert after["segments"] == [[0, 6, False]]  # the provisional one is gone
    # Its sources stopped right after the replacement (a lead and the crossfade), not at its end (3 s).
    assert after["provisional"] == len(after["ended"]) == 1 and 0 < after["ended"][0] < 0.3
    assert after["heard"] == [0.25, 0.25]  # the whole segment alone, not both
    assert after["peak"] == 0.25  # the waveform is drawn anew where it was replaced
