// Round trip: from sending the message that held a reply's last consumed user sample until the
// reply arrives. The page keeps the latest KEEP_ROUND_TRIPS times and their p50 and p99.

export const KEEP_ROUND_TRIPS = 2000;

// The value at quantile `q` (0..1) by the nearest rank; null for no values.
export function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

// `sent`: the messages in flight, [{end (user samples sent up to and with it), time}], oldest first.
// The milliseconds from sending the message holding sample `consumed` to `now` (null if `consumed`
// is 0 or past every message); drops the messages before that one, in place.
export function takeRoundTrip(sent, consumed, now) {
  let i = 0;
  while (i < sent.length && sent[i].end < consumed) i++;
  const ms = consumed > 0 && i < sent.length ? now - sent[i].time : null;
  if (i > 0) sent.splice(0, i);
  return ms;
}

// Adds one round trip to the page's state: its `roundTripMs` list and `roundTrip` summary.
export function recordRoundTrip(state, ms) {
  state.roundTripMs.push(Math.round(ms * 10) / 10);
  if (state.roundTripMs.length > KEEP_ROUND_TRIPS) state.roundTripMs.shift();
  state.roundTrip = {
    latest: Math.round(ms),
    p50: Math.round(percentile(state.roundTripMs, 0.5)),
    p99: Math.round(percentile(state.roundTripMs, 0.99)),
    count: state.roundTrip.count + 1,
  };
}
