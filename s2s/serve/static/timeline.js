// The timeline: lanes for the user's level, the system's level, its speaking probability and words,
// over the last TIMELINE_SECONDS of the connection's clock (seconds of user audio sent so far).

export const TIMELINE_SECONDS = 10;

// The RMS level of `samples` in dB relative to `scale` (full scale).
export function rmsDb(samples, scale = 1) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const rms = Math.sqrt(sum / Math.max(1, samples.length)) / scale;
  return 20 * Math.log10(rms + 1e-9);
}

// What the timeline draws, each point at `t` seconds of the connection's clock.
export class Timeline {
  constructor() {
    this.clear();
  }

  clear() {
    this.input = []; // {t, d, db}: the user's audio sent
    this.output = []; // {t, d, db}: the system's audio, per frame
    this.speaking = []; // {t, d, p}: the system's speaking probability, per frame
    this.words = []; // {t, word}
    this.marks = []; // {t, label}: a new dialogue
  }

  // `samples`: the user's audio (floats in -1..1) sent from `t` for `d` seconds.
  addInput(t, d, samples) {
    this.input.push({ t, d, db: rmsDb(samples) });
  }

  // One frame of the system's: speaking probability `p` and its int16 audio `pcm` (maybe empty).
  addFrame(t, d, p, pcm) {
    this.speaking.push({ t, d, p });
    this.output.push({ t, d, db: pcm.length ? rmsDb(pcm, 32768) : -180 });
  }

  addWord(t, word) {
    this.words.push({ t, word });
  }

  addMark(t, label) {
    this.marks.push({ t, label });
  }

  // Drops what is over a second older than the window ending at `now`.
  prune(now) {
    const oldest = now - TIMELINE_SECONDS - 1;
    for (const series of [this.input, this.output, this.speaking, this.words, this.marks]) {
      let i = 0;
      while (i < series.length && series[i].t < oldest) i++;
      if (i) series.splice(0, i);
    }
  }

  // Draws the window ending at `now` (or starting at 0, until it fills) on `canvas`.
  draw(canvas, now) {
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
    level(lanes[0], this.input, colors.user);
    level(lanes[1], this.output, colors.system);

    const lane = lanes[2];
    g.fillStyle = colors.grid;
    g.fillRect(gutter, (lane.y0 + lane.y1) / 2, width - gutter, 1 * ratio); // p = 0.5
    g.fillStyle = colors.speaking;
    for (const point of this.speaking) {
      if (point.t + point.d < left) continue;
      const h = Math.min(1, Math.max(0, point.p)) * (lane.y1 - lane.y0);
      g.fillRect(x(point.t), lane.y1 - h, Math.max(1, x(point.t + point.d) - x(point.t) - ratio), h);
    }

    // Each word at its frame: a tick, and its name on the first of three rows with room for it.
    const words = lanes[3];
    const rows = 3;
    const rowEnds = new Array(rows).fill(-Infinity);
    g.font = `${13 * ratio}px system-ui, sans-serif`;
    for (const point of this.words) {
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
    for (const mark of this.marks) {
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
}

function cssColor(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}
