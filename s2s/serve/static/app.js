// The page of `python -m s2s.serve`: talk to the model through the microphone and hear it answer,
// full duplex, over one websocket (the wire format is s2s/serve/protocol.py).
//
// Microphone -> capture worklet (blocks of ~21 ms at the AudioContext's rate) -> resampled here to
// the server's rate -> int16 LE binary messages. Replies (uint32 LE header length | JSON header |
// int16 PCM) -> resampled to the context's rate -> playback worklet (jitter buffer). A canvas draws
// the last seconds: the user's level, the system's level and speaking probability, its words.
//
// Everything a test needs is plain data on `window.s2s` (JSON-serializable).

const TIMELINE_SECONDS = 10;
const CAPTURE_BLOCK_SECONDS = 0.021; // ~20 ms of microphone audio per message
const NON_SILENT = 33; // |int16| at or above this (-60 dBFS) counts a reply sample as non-silent
const KEEP_ROUND_TRIPS = 2000;

// ----------------------------------------------------------------------------------------------
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

export function toInt16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.round(samples[i] * 32767);
    pcm[i] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
  }
  return pcm;
}

function littleEndianBytes(pcm) {
  const bytes = new ArrayBuffer(pcm.length * 2);
  const view = new DataView(bytes);
  for (let i = 0; i < pcm.length; i++) view.setInt16(2 * i, pcm[i], true);
  return bytes;
}

// One binary ChunkReply: {header, pcm (Int16Array)}; throws on a malformed message.
export function decodeReply(buffer) {
  if (buffer.byteLength < 4) throw new Error(`a chunk reply of ${buffer.byteLength} bytes has no header length`);
  const view = new DataView(buffer);
  const length = view.getUint32(0, true);
  const end = 4 + length;
  if (end > buffer.byteLength || (buffer.byteLength - end) % 2) {
    throw new Error(`malformed chunk reply: a ${length}-byte header in a ${buffer.byteLength}-byte message`);
  }
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const pcm = new Int16Array((buffer.byteLength - end) / 2);
  for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(end + 2 * i, true);
  return { header, pcm };
}

export function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function rmsDb(samples, scale = 1) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const rms = Math.sqrt(sum / Math.max(1, samples.length)) / scale;
  return 20 * Math.log10(rms + 1e-9);
}

// ----------------------------------------------------------------------------------------------
// The state a test reads: plain data only.

const s2s = {
  state: "idle", // idle | starting | running | stopping | stopped | closed | error
  hello: null,
  contextRate: null,
  sentSamples: 0, // user samples (server rate) sent on this connection
  sentMessages: 0,
  repliesReceived: 0,
  lastChunk: null,
  consumed: 0,
  dropped: 0,
  stepMs: null,
  replyAudioSamples: 0, // system samples (server rate) received
  nonSilentReplySamples: 0,
  playedSamples: 0, // frames of reply audio the playback worklet played (context rate)
  playedSeconds: 0,
  underruns: 0,
  bufferedSamples: 0,
  trimmedSamples: 0,
  roundTripMs: [],
  roundTrip: { latest: null, p50: null, p99: null, count: 0 },
  words: [],
  resets: 0,
  closeCode: null,
  closeReason: null,
  errors: [],
};
if (typeof window !== "undefined") window.s2s = s2s;

// What the timeline draws, on the connection's own clock (seconds of user audio sent so far).
const timeline = { input: [], output: [], speaking: [], words: [], marks: [] };

let session = null; // {context, socket, stream, capture, playback, ...} while started

function $(id) {
  return document.getElementById(id);
}

function setState(state, detail = "") {
  s2s.state = state;
  const label = $("state");
  if (label) {
    label.textContent = detail ? `${state}: ${detail}` : state;
    label.dataset.state = state;
  }
  const running = state === "starting" || state === "running";
  if ($("start")) $("start").disabled = running;
  if ($("stop")) $("stop").disabled = !running;
  if ($("reset")) $("reset").disabled = state !== "running";
}

function reportError(message) {
  s2s.errors.push(String(message));
  const list = $("errors");
  if (list) {
    const item = document.createElement("li");
    item.textContent = String(message);
    list.append(item);
    list.hidden = false;
  }
}

function resetStats() {
  Object.assign(s2s, {
    hello: null, contextRate: null, sentSamples: 0, sentMessages: 0, repliesReceived: 0, lastChunk: null,
    consumed: 0, dropped: 0, stepMs: null, replyAudioSamples: 0, nonSilentReplySamples: 0, playedSamples: 0,
    playedSeconds: 0, underruns: 0, bufferedSamples: 0, trimmedSamples: 0, roundTripMs: [],
    roundTrip: { latest: null, p50: null, p99: null, count: 0 }, words: [], resets: 0, closeCode: null,
    closeReason: null,
  });
  for (const key of Object.keys(timeline)) timeline[key] = [];
  renderStats();
}

// ----------------------------------------------------------------------------------------------
// Start / stop / reset.

function socketUrl() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

async function start() {
  if (session) return;
  resetStats();
  s2s.errors = [];
  $("errors").replaceChildren();
  $("errors").hidden = true;
  showNotice("");
  setState("starting", "opening the microphone and the connection");
  // The AudioContext is made inside the click, so the browser lets it play.
  const context = new AudioContext({ latencyHint: "interactive" });
  const current = { context, socket: null, stream: null, sent: [], stopped: false };
  session = current;
  s2s.contextRate = context.sampleRate;
  const resumed = context.resume();
  try {
    const hello = openSocket(current);
    hello.catch(() => {}); // handled where it is awaited below; not an unhandled rejection meanwhile
    const modules = Promise.all([
      context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url)),
      context.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url)),
    ]);
    current.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      video: false,
    });
    await Promise.all([modules, resumed]);
    const greeting = await hello;
    if (current.stopped) return;
    connectAudio(current, greeting);
    setState("running");
  } catch (error) {
    if (current.stopped) return;
    const message = error && error.message ? error.message : String(error);
    if (!(error && error.reported)) reportError(message);
    await stop("error", "see below");
  }
}

function openSocket(current) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(socketUrl());
    socket.binaryType = "arraybuffer";
    current.socket = socket;
    let greeted = false;
    socket.onmessage = (event) => {
      if (current !== session) return;
      if (typeof event.data === "string") {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          reportError(`the server sent a text message that is not JSON: ${event.data.slice(0, 80)}`);
          return;
        }
        if (message.type === "hello") {
          greeted = true;
          s2s.hello = message;
          showHello(message);
          resolve(message);
        } else if (message.type === "error") {
          current.serverError = `server: ${message.message}`;
          reportError(current.serverError);
        } else if (message.type === "reset") {
          current.awaitingReset = false;
          s2s.resets += 1;
          timeline.marks.push({ t: s2s.sentSamples / rate(), label: "new dialogue" });
          if (message.reason) showNotice(`New dialogue: ${message.reason}.`);
        } // other types: from a newer server, nothing this page needs
      } else {
        receiveReply(current, event.data);
      }
    };
    socket.onerror = () => {
      if (!greeted) reject(new Error(`could not connect to ${socketUrl()}`));
    };
    socket.onclose = (event) => {
      s2s.closeCode = event.code;
      s2s.closeReason = event.reason;
      if (!greeted) {
        const why = event.code === 1013 ? "every stream of the server is taken; try again later" : event.reason;
        const closed = `the server closed the connection (${event.code}${why ? `: ${why}` : ""})`;
        const error = new Error(current.serverError || closed);
        error.reported = Boolean(current.serverError); // already in the list of errors
        reject(error);
        return;
      }
      if (current === session && !current.stopped) {
        const why = event.reason ? `${event.code}: ${event.reason}` : `code ${event.code}`;
        if (event.code !== 1000) reportError(`connection closed (${why})`);
        stop("closed", why);
      }
    };
  });
}

function rate() {
  return (s2s.hello && s2s.hello.sample_rate) || 16000;
}

function connectAudio(current, hello) {
  const context = current.context;
  const serverRate = hello.sample_rate;
  current.up = new Resampler(context.sampleRate, serverRate);
  current.down = new Resampler(serverRate, context.sampleRate);
  const maxSamples = Math.floor((hello.max_message_bytes || 32000) / 2);

  const chunkFrames = Math.round((hello.chunk_samples / serverRate) * context.sampleRate);
  current.playback = new AudioWorkletNode(context, "s2s-playback", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: {
      startFrames: chunkFrames,
      maxFrames: Math.max(4 * chunkFrames, Math.round(0.8 * context.sampleRate)),
      capacity: 4 * context.sampleRate,
    },
  });
  current.playback.port.onmessage = (event) => {
    const stats = event.data;
    if (current !== session || stats.type !== "stats") return;
    s2s.playedSamples = stats.played;
    s2s.playedSeconds = stats.played / context.sampleRate;
    s2s.underruns = stats.underruns;
    s2s.bufferedSamples = stats.buffered;
    s2s.trimmedSamples = stats.trimmedFrames;
  };
  current.playback.connect(context.destination);

  const blockFrames = Math.max(128, Math.round(CAPTURE_BLOCK_SECONDS * context.sampleRate));
  current.source = context.createMediaStreamSource(current.stream);
  current.capture = new AudioWorkletNode(context, "s2s-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: "explicit",
    channelInterpretation: "speakers",
    processorOptions: { blockFrames },
  });
  current.capture.port.onmessage = (event) => {
    const socket = current.socket;
    if (current !== session || !socket || socket.readyState !== WebSocket.OPEN) return;
    const samples = current.up.process(event.data);
    for (let from = 0; from < samples.length; from += maxSamples) {
      const piece = samples.subarray(from, Math.min(samples.length, from + maxSamples));
      if (!piece.length) continue;
      const pcm = toInt16(piece);
      timeline.input.push({ t: s2s.sentSamples / serverRate, d: piece.length / serverRate, db: rmsDb(piece) });
      socket.send(littleEndianBytes(pcm));
      s2s.sentSamples += pcm.length;
      s2s.sentMessages += 1;
      current.sent.push({ end: s2s.sentSamples, time: performance.now() });
    }
  };
  current.source.connect(current.capture);
  current.capture.connect(context.destination); // silent; keeps the worklet pulled
}

function receiveReply(current, buffer) {
  const now = performance.now();
  let reply;
  try {
    reply = decodeReply(buffer);
  } catch (error) {
    reportError(error.message);
    return;
  }
  const { header, pcm } = reply;
  const serverRate = rate();
  s2s.repliesReceived += 1;
  s2s.lastChunk = header.chunk;
  s2s.consumed = header.consumed;
  s2s.dropped = header.dropped;
  s2s.stepMs = header.step_ms;

  // Round trip: from sending the message that held user sample `consumed` until now.
  const sent = current.sent;
  let i = 0;
  while (i < sent.length && sent[i].end < header.consumed) i++;
  if (header.consumed > 0 && i < sent.length) {
    const ms = now - sent[i].time;
    s2s.roundTripMs.push(Math.round(ms * 10) / 10);
    if (s2s.roundTripMs.length > KEEP_ROUND_TRIPS) s2s.roundTripMs.shift();
    s2s.roundTrip = {
      latest: Math.round(ms),
      p50: Math.round(percentile(s2s.roundTripMs, 0.5)),
      p99: Math.round(percentile(s2s.roundTripMs, 0.99)),
      count: s2s.roundTrip.count + 1,
    };
  }
  if (i > 0) sent.splice(0, i);

  // The reply's frames sit on the connection's clock just before `consumed`.
  const frames = header.speaking || [];
  const frameSamples = Math.round((s2s.hello.frame_seconds || 0.04) * serverRate);
  const frameStart = (k) => (header.consumed - (frames.length - k) * frameSamples) / serverRate;
  const frameSeconds = frameSamples / serverRate;
  frames.forEach((p, k) => {
    const piece = pcm.subarray(k * frameSamples, (k + 1) * frameSamples);
    timeline.speaking.push({ t: frameStart(k), d: frameSeconds, p });
    timeline.output.push({ t: frameStart(k), d: frameSeconds, db: piece.length ? rmsDb(piece, 32768) : -180 });
  });
  (header.words || []).forEach((word, k) => {
    if (word === null || word === undefined || word === "") return;
    timeline.words.push({ t: frameStart(k), word });
    s2s.words.push(word);
    if (s2s.words.length > 50) s2s.words.shift();
    showWord(word);
  });
  prune();

  s2s.replyAudioSamples += pcm.length;
  let loud = 0;
  const samples = new Float32Array(pcm.length);
  for (let k = 0; k < pcm.length; k++) {
    if (pcm[k] >= NON_SILENT || pcm[k] <= -NON_SILENT) loud++;
    samples[k] = pcm[k] / 32768;
  }
  s2s.nonSilentReplySamples += loud;
  // After Reset, the old dialogue's replies still in flight are not played: the server sends its
  // reset notice after them, so everything before the notice belongs to the dialogue left behind.
  if (current.playback && pcm.length && !current.awaitingReset) {
    const out = current.down.process(samples);
    current.playback.port.postMessage(out, [out.buffer]);
  }
  renderStats();
}

function prune() {
  const oldest = s2s.sentSamples / rate() - TIMELINE_SECONDS - 1;
  for (const key of Object.keys(timeline)) {
    const series = timeline[key];
    let i = 0;
    while (i < series.length && series[i].t < oldest) i++;
    if (i) series.splice(0, i);
  }
}

async function stop(state = "stopped", detail = "") {
  const current = session;
  if (!current) {
    setState(state, detail);
    return;
  }
  current.stopped = true;
  setState("stopping");
  if (current.capture) current.capture.port.postMessage({ type: "stop" });
  if (current.stream) for (const track of current.stream.getTracks()) track.stop();
  if (current.socket && current.socket.readyState <= WebSocket.OPEN) current.socket.close(1000, "stopped");
  try {
    await current.context.close();
  } catch {
    // already closed
  }
  if (session === current) session = null;
  setState(state, detail);
}

function resetDialogue() {
  const current = session;
  if (!current || !current.socket || current.socket.readyState !== WebSocket.OPEN) return;
  current.socket.send(JSON.stringify({ type: "reset" }));
  current.awaitingReset = true; // until the server's reset notice: see receiveReply
  if (current.playback) current.playback.port.postMessage({ type: "flush" });
  s2s.words = [];
  const transcript = $("transcript");
  if (transcript) transcript.textContent = "";
}

// ----------------------------------------------------------------------------------------------
// What the page shows.

function showHello(message) {
  $("model").textContent = message.model ?? "?";
  $("stream").textContent = message.stream ?? "?";
  const chunkMs = Math.round((message.chunk_samples / message.sample_rate) * 1000);
  $("format").textContent = `${message.sample_rate / 1000} kHz, ${chunkMs} ms chunks`;
}

function showNotice(text) {
  const notice = $("notice");
  if (notice) notice.textContent = text;
}

function showWord(word) {
  const transcript = $("transcript");
  if (!transcript) return;
  transcript.textContent = `${transcript.textContent} ${word}`.trim().split(" ").slice(-40).join(" ");
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

function renderStats() {
  if (typeof document === "undefined" || !$("rtt-latest")) return;
  $("rtt-latest").textContent = ms(s2s.roundTrip.latest);
  $("rtt-p50").textContent = ms(s2s.roundTrip.p50);
  $("rtt-p99").textContent = ms(s2s.roundTrip.p99);
  $("rtt-count").textContent = String(s2s.roundTrip.count);
  const serverRate = rate();
  $("sent").textContent = `${(s2s.sentSamples / serverRate).toFixed(1)} s`;
  $("received").textContent = `${s2s.repliesReceived} (${(s2s.replyAudioSamples / serverRate).toFixed(1)} s)`;
  $("played").textContent = `${s2s.playedSeconds.toFixed(1)} s`;
  $("underruns").textContent = String(s2s.underruns);
  $("dropped").textContent = `${(s2s.dropped / serverRate).toFixed(2)} s`;
  $("step").textContent = ms(s2s.stepMs);
}

// ----------------------------------------------------------------------------------------------
// The timeline: lanes for the user's level, the system's level, its speaking probability and words,
// over the last TIMELINE_SECONDS of the connection's clock (the user's audio sent so far).

function cssColor(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

function draw() {
  const canvas = $("timeline");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const g = canvas.getContext("2d");
  const colors = {
    background: cssColor("--canvas", "#fff"), grid: cssColor("--grid", "#ddd"), text: cssColor("--text", "#222"),
    muted: cssColor("--muted", "#666"), user: cssColor("--user", "#2b6cb0"), system: cssColor("--system", "#c05621"),
    speaking: cssColor("--speaking", "#2f855a"),
  };
  g.fillStyle = colors.background;
  g.fillRect(0, 0, width, height);

  const gutter = 92 * ratio;
  const now = s2s.sentSamples / rate();
  const left = Math.max(0, now - TIMELINE_SECONDS); // fills from the left, then scrolls
  const x = (t) => gutter + ((t - left) / TIMELINE_SECONDS) * (width - gutter);
  const lanes = [
    { name: "you", top: 0.0, bottom: 0.25 },
    { name: "model audio", top: 0.27, bottom: 0.5 },
    { name: "speaking p", top: 0.52, bottom: 0.75 },
    { name: "words", top: 0.77, bottom: 1.0 },
  ].map((lane) => ({ ...lane, y0: lane.top * height, y1: lane.bottom * height - 2 * ratio }));

  g.font = `${12 * ratio}px system-ui, sans-serif`;
  g.textBaseline = "middle";
  for (const lane of lanes) {
    g.fillStyle = colors.grid;
    g.fillRect(gutter, lane.y1, width - gutter, 1 * ratio);
    g.fillStyle = colors.muted;
    g.fillText(lane.name, 6 * ratio, (lane.y0 + lane.y1) / 2);
  }
  // A tick every second of the connection's clock.
  g.fillStyle = colors.grid;
  for (let t = Math.ceil(left); t <= left + TIMELINE_SECONDS; t++) g.fillRect(x(t), 0, 1 * ratio, height);

  const level = (lane, series, color) => {
    g.fillStyle = color;
    for (const point of series) {
      if (point.t + point.d < left) continue;
      const v = Math.min(1, Math.max(0, (point.db + 60) / 60)); // -60..0 dBFS
      const h = v * (lane.y1 - lane.y0);
      g.fillRect(x(point.t), lane.y1 - h, Math.max(1, x(point.t + point.d) - x(point.t)), h);
    }
  };
  level(lanes[0], timeline.input, colors.user);
  level(lanes[1], timeline.output, colors.system);

  const lane = lanes[2];
  g.fillStyle = colors.grid;
  g.fillRect(gutter, (lane.y0 + lane.y1) / 2, width - gutter, 1 * ratio); // p = 0.5
  g.fillStyle = colors.speaking;
  for (const point of timeline.speaking) {
    if (point.t + point.d < left) continue;
    const h = Math.min(1, Math.max(0, point.p)) * (lane.y1 - lane.y0);
    g.fillRect(x(point.t), lane.y1 - h, Math.max(1, x(point.t + point.d) - x(point.t) - ratio), h);
  }

  // Each word at its frame: a tick, and its name on the first of three rows with room for it.
  const words = lanes[3];
  const rows = 3;
  const rowEnds = new Array(rows).fill(-Infinity);
  g.font = `${13 * ratio}px system-ui, sans-serif`;
  for (const point of timeline.words) {
    if (point.t < left) continue;
    const px = x(point.t);
    g.fillStyle = colors.muted;
    g.fillRect(px, words.y0, 1 * ratio, 5 * ratio);
    const row = rowEnds.findIndex((end) => end <= px);
    if (row < 0) continue; // no room: the tick alone (the transcript below the canvas has every word)
    g.fillStyle = colors.text;
    g.fillText(point.word, px + 2 * ratio, words.y0 + ((row + 0.5) * (words.y1 - words.y0)) / rows + 3 * ratio);
    rowEnds[row] = px + g.measureText(point.word).width + 8 * ratio;
  }
  g.fillStyle = colors.muted;
  for (const mark of timeline.marks) {
    if (mark.t < left) continue;
    g.fillRect(x(mark.t), 0, 2 * ratio, height);
    g.fillText(mark.label, x(mark.t) + 4 * ratio, 8 * ratio);
  }
  g.fillStyle = colors.text;
  g.fillRect(x(now), 0, 1 * ratio, height); // now: the user's latest audio
  g.textAlign = "right";
  g.fillStyle = colors.muted;
  g.fillText(`${now.toFixed(1)} s`, width - 4 * ratio, height - 8 * ratio);
  g.textAlign = "left";
}

function frame() {
  try {
    draw();
  } catch (error) {
    reportError(`timeline: ${error.message}`);
    return; // stop drawing rather than repeat the error every frame
  }
  requestAnimationFrame(frame);
}

if (typeof document !== "undefined") {
  $("start").addEventListener("click", () => start());
  $("stop").addEventListener("click", () => stop());
  $("reset").addEventListener("click", () => resetDialogue());
  window.addEventListener("unhandledrejection", (event) => {
    reportError(event.reason && event.reason.message ? event.reason.message : event.reason);
  });
  setState("idle");
  renderStats();
  requestAnimationFrame(frame);
}
