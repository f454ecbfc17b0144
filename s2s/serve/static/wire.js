// The binary messages of the websocket (s2s/serve/protocol.py): the page sends int16 little-endian
// PCM; the server replies with ChunkReplies, uint32 LE header length | JSON header | int16 LE PCM.

// Samples in -1..1 as int16, rounded and clipped.
export function toInt16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.round(samples[i] * 32767);
    pcm[i] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
  }
  return pcm;
}

// int16 samples as the bytes of one audio message (little-endian whatever the machine's order).
export function littleEndianBytes(pcm) {
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
