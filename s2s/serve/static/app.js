// The page of `python -m s2s.serve`: talk to the model through the microphone and hear it answer,
// full duplex, over one websocket (the wire format is s2s/serve/protocol.py).
//
// Microphone -> capture worklet (blocks of ~21 ms at the AudioContext's rate) -> resampled here to
// the server's rate -> int16 LE binary messages. Replies (uint32 LE header length | JSON header |
// int16 PCM) -> resampled to the context's rate -> playback worklet (jitter buffer). A canvas draws
// the last seconds: the user's level, the system's level and speaking probability, its words.
//
// This module holds the state, the buttons, the websocket and the audio graph; resampler.js,
// wire.js, round-trip.js, timeline.js and view.js hold the rest.
//
// Everything a test needs is plain data on `window.s2s` (JSON-serializable).

import { Resampler } from "./resampler.js";
import { decodeReply, littleEndianBytes, toInt16 } from "./wire.js";
import { recordRoundTrip, takeRoundTrip } from "./round-trip.js";
import { Timeline } from "./timeline.js";
import {
  $, clearErrors, clearTranscript, showError, showHello, showNotice, showState, showStats, showWord,
} from "./view.js";

const CAPTURE_BLOCK_SECONDS = 0.021; // ~20 ms of microphone audio per message
const NON_SILENT = 33; // |int16| at or above this (-60 dBFS) counts a reply sample as non-silent

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
const timeline = new Timeline();

let session = null; // {context, socket, stream, capture, playback, ...} while started

function setState(state, detail = "") {
  s2s.state = state;
  showState(state, detail);
}

function reportError(message) {
  s2s.errors.push(String(message));
  showError(message);
}

function renderStats() {
  showStats(s2s, rate());
}

function resetStats() {
  Object.assign(s2s, {
    hello: null, contextRate: null, sentSamples: 0, sentMessages: 0, repliesReceived: 0, lastChunk: null,
    consumed: 0, dropped: 0, stepMs: null, replyAudioSamples: 0, nonSilentReplySamples: 0, playedSamples: 0,
    playedSeconds: 0, underruns: 0, bufferedSamples: 0, trimmedSamples: 0, roundTripMs: [],
    roundTrip: { latest: null, p50: null, p99: null, count: 0 }, words: [], resets: 0, closeCode: null,
    closeReason: null,
  });
  timeline.clear();
  renderStats();
}

// The connection's clock: seconds of user audio sent so far.
function now() {
  return s2s.sentSamples / rate();
}

function rate() {
  return (s2s.hello && s2s.hello.sample_rate) || 16000;
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
  clearErrors();
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
          timeline.addMark(now(), "new dialogue");
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
      timeline.addInput(s2s.sentSamples / serverRate, piece.length / serverRate, piece);
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
  const arrived = performance.now();
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
  const ms = takeRoundTrip(current.sent, header.consumed, arrived);
  if (ms !== null) recordRoundTrip(s2s, ms);

  // The reply's frames sit on the connection's clock just before `consumed`.
  const frames = header.speaking || [];
  const frameSamples = Math.round((s2s.hello.frame_seconds || 0.04) * serverRate);
  const frameStart = (k) => (header.consumed - (frames.length - k) * frameSamples) / serverRate;
  const frameSeconds = frameSamples / serverRate;
  frames.forEach((p, k) => {
    timeline.addFrame(frameStart(k), frameSeconds, p, pcm.subarray(k * frameSamples, (k + 1) * frameSamples));
  });
  (header.words || []).forEach((word, k) => {
    if (word === null || word === undefined || word === "") return;
    timeline.addWord(frameStart(k), word);
    s2s.words.push(word);
    if (s2s.words.length > 50) s2s.words.shift();
    showWord(word);
  });
  timeline.prune(now());

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
  clearTranscript();
}

// ----------------------------------------------------------------------------------------------
// The timeline, redrawn every animation frame.

function frame() {
  try {
    timeline.draw($("timeline"), now());
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
