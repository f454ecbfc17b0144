// A streaming windowed-sinc resampler (Blackman window, `zeros` zero crossings each side of the
// lower rate's cutoff). It keeps the input history and the fractional read position across calls,
// so a stream cut into blocks resamples exactly as one piece (no clicks at the block edges); its
// delay is the kernel's half width (under 1 ms at the rates used here).

export class Resampler {
  constructor(inRate, outRate, { zeros = 12, rolloff = 0.92, resolution = 256 } = {}) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.identity = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    this.cutoff = Math.min(1, outRate / inRate) * rolloff; // in cycles per 2 input samples
    this.half = Math.ceil(zeros / this.cutoff); // kernel half width, input samples
    this.resolution = resolution;
    const table = new Float32Array(this.half * resolution + 2);
    for (let i = 0; i < table.length; i++) {
      const t = i / resolution;
      if (t >= this.half) break;
      const x = Math.PI * this.cutoff * t;
      const sinc = t === 0 ? 1 : Math.sin(x) / x;
      const a = (Math.PI * t) / this.half;
      const blackman = 0.42 + 0.5 * Math.cos(a) + 0.08 * Math.cos(2 * a);
      table[i] = this.cutoff * sinc * blackman;
    }
    this.table = table;
    this.buffer = new Float32Array(2 * this.half + 4096);
    this.length = this.half; // the history starts as `half` zeros
    this.position = this.half; // where the next output sample sits, in buffer samples
  }

  kernel(t) {
    const u = Math.abs(t) * this.resolution;
    const i = Math.floor(u);
    if (i >= this.table.length - 1) return 0;
    const f = u - i;
    return this.table[i] + f * (this.table[i + 1] - this.table[i]);
  }

  process(input) {
    if (this.identity) return Float32Array.from(input);
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    const buffer = this.buffer, half = this.half;
    const count = Math.max(0, Math.floor((this.length - 1 - half - this.position) / this.step) + 1);
    const out = new Float32Array(count);
    let position = this.position;
    for (let n = 0; n < count; n++) {
      const first = Math.max(0, Math.ceil(position - half));
      const last = Math.min(this.length - 1, Math.floor(position + half));
      let sum = 0;
      for (let k = first; k <= last; k++) sum += buffer[k] * this.kernel(position - k);
      out[n] = sum;
      position += this.step;
    }
    // Keep only the history the next output still needs.
    const keepFrom = Math.max(0, Math.floor(position - half) - 1);
    buffer.copyWithin(0, keepFrom, this.length);
    this.length -= keepFrom;
    this.position = position - keepFrom;
    return out;
  }
}
