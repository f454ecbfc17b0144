// The speaker side of the page: a ring buffer of the system's audio at the AudioContext's rate with
// a small jitter buffer. It starts (and restarts after an underrun) once `startFrames` are queued;
// when the queue runs dry while playing it outputs silence and counts an underrun. A queue that grows
// past `maxFrames` (the server's clock drifting against this one) is cut back to `startFrames`.
// Every ~25 ms it posts what it has done: frames of reply audio actually played, underruns, etc.

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { startFrames = 7680, maxFrames = 48000, capacity = 4 * 48000 } = options.processorOptions || {};
    this.startFrames = startFrames;
    this.maxFrames = Math.max(maxFrames, startFrames);
    this.ring = new Float32Array(Math.max(capacity, 2 * this.maxFrames));
    this.read = 0;
    this.size = 0;
    this.playing = false;
    this.stats = { played: 0, underruns: 0, silentFrames: 0, trimmedFrames: 0, overflowFrames: 0, buffered: 0 };
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(data) {
    if (data instanceof Float32Array) {
      this.push(data);
    } else if (data && data.type === "flush") {
      this.read = 0;
      this.size = 0;
      this.playing = false;
    }
  }

  push(samples) {
    const ring = this.ring;
    let from = 0;
    if (samples.length > ring.length) {
      from = samples.length - ring.length;
      this.stats.overflowFrames += from;
    }
    const free = ring.length - this.size;
    const needed = samples.length - from;
    if (needed > free) { // never expected: the cut below keeps the queue far from full
      this.skip(needed - free);
      this.stats.overflowFrames += needed - free;
    }
    let write = (this.read + this.size) % ring.length;
    for (let i = from; i < samples.length; i++) {
      ring[write] = samples[i];
      write = write + 1 === ring.length ? 0 : write + 1;
    }
    this.size += needed;
    if (this.size > this.maxFrames) {
      const cut = this.size - this.startFrames;
      this.skip(cut);
      this.stats.trimmedFrames += cut;
    }
  }

  skip(frames) {
    this.read = (this.read + frames) % this.ring.length;
    this.size -= frames;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const frames = out.length;
    if (!this.playing && this.size >= this.startFrames) this.playing = true;
    let written = 0;
    if (this.playing) {
      const ring = this.ring;
      written = Math.min(frames, this.size);
      for (let i = 0; i < written; i++) {
        out[i] = ring[this.read];
        this.read = this.read + 1 === ring.length ? 0 : this.read + 1;
      }
      this.size -= written;
      this.stats.played += written;
      if (written < frames) { // ran dry while playing: silence until the jitter buffer refills
        this.playing = false;
        this.stats.underruns += 1;
      }
    }
    for (let i = written; i < frames; i++) out[i] = 0;
    if (this.stats.played > 0) this.stats.silentFrames += frames - written;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += frames;
    if (this.sinceReport >= sampleRate / 40) {
      this.sinceReport = 0;
      this.stats.buffered = this.size;
      this.port.postMessage({ type: "stats", ...this.stats, playing: this.playing });
    }
    return true;
  }
}

registerProcessor("s2s-playback", PlaybackProcessor);
