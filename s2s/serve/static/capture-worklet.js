// The microphone side of the page: gathers the input's first channel, at the AudioContext's own
// rate, into blocks of `blockFrames` (~20 ms) and posts each to the page, which resamples it to the
// server's rate and sends it. The block is transferred, not copied. Its output stays silent.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { blockFrames = 1024 } = options.processorOptions || {};
    this.blockFrames = blockFrames;
    this.block = new Float32Array(blockFrames);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return this.running; // no input connected yet (or it is silent and was dropped)
    let offset = 0;
    while (offset < channel.length) {
      const count = Math.min(channel.length - offset, this.blockFrames - this.filled);
      this.block.set(channel.subarray(offset, offset + count), this.filled);
      this.filled += count;
      offset += count;
      if (this.filled === this.blockFrames) {
        this.port.postMessage(this.block, [this.block.buffer]);
        this.block = new Float32Array(this.blockFrames);
        this.filled = 0;
      }
    }
    return this.running;
  }
}

registerProcessor("s2s-capture", CaptureProcessor);
