// What the page shows: the connection's state and buttons, errors and notices, the model's words
// and the figures of the Round trip and Stream panels (from the page's state, `window.s2s`).

export function $(id) {
  return document.getElementById(id);
}

// The state's label, and which buttons can be pressed in it.
export function showState(state, detail = "") {
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

export function showError(message) {
  const list = $("errors");
  if (list) {
    const item = document.createElement("li");
    item.textContent = String(message);
    list.append(item);
    list.hidden = false;
  }
}

export function clearErrors() {
  $("errors").replaceChildren();
  $("errors").hidden = true;
}

export function showHello(message) {
  $("model").textContent = message.model ?? "?";
  $("stream").textContent = message.stream ?? "?";
  const chunkMs = Math.round((message.chunk_samples / message.sample_rate) * 1000);
  $("format").textContent = `${message.sample_rate / 1000} kHz, ${chunkMs} ms chunks`;
}

export function showNotice(text) {
  const notice = $("notice");
  if (notice) notice.textContent = text;
}

// Appends a word to the transcript, which keeps the last 40.
export function showWord(word) {
  const transcript = $("transcript");
  if (!transcript) return;
  transcript.textContent = `${transcript.textContent} ${word}`.trim().split(" ").slice(-40).join(" ");
}

export function clearTranscript() {
  const transcript = $("transcript");
  if (transcript) transcript.textContent = "";
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

// The panels' figures from the page's state `s2s`; sample counts are at the server's rate.
export function showStats(s2s, serverRate) {
  if (typeof document === "undefined" || !$("rtt-latest")) return;
  $("rtt-latest").textContent = ms(s2s.roundTrip.latest);
  $("rtt-p50").textContent = ms(s2s.roundTrip.p50);
  $("rtt-p99").textContent = ms(s2s.roundTrip.p99);
  $("rtt-count").textContent = String(s2s.roundTrip.count);
  $("sent").textContent = `${(s2s.sentSamples / serverRate).toFixed(1)} s`;
  $("received").textContent = `${s2s.repliesReceived} (${(s2s.replyAudioSamples / serverRate).toFixed(1)} s)`;
  $("played").textContent = `${s2s.playedSeconds.toFixed(1)} s`;
  $("underruns").textContent = String(s2s.underruns);
  $("dropped").textContent = `${(s2s.dropped / serverRate).toFixed(2)} s`;
  $("step").textContent = ms(s2s.stepMs);
}
