"""`python -m s2s.serve` over real websockets on localhost: what a client gets back is what the model
streams offline for the same audio, frame for frame; a malformed, stalled or surplus client is cut
off alone; the options are checked before anything loads."""

import asyncio
import contextlib
import socket
import struct

import aiohttp
import numpy as np
import pytest
import torch

from s2s.serve import server
from s2s.serve.client import speech_like, talk
from s2s.serve.process import ServerProcess
from s2s.serve.protocol import ChunkReply, ProtocolError, decode_audio, decode_control, encode_audio
from s2s.streaming.token_session import TokenStreamingSession

RATE = 16000


def _offline(hub, row: int, waveform: np.ndarray) -> dict:
    """The same model streamed locally on one stream with the server row's seed: the reference."""
    served = hub.session
    session = TokenStreamingSession(
        served.model, batch=1, chunk=served.chunk, left_chunks=served.left_chunks, sampling=served.sampling,
        seeds=served.seeds[row : row + 1].cpu(),
    )  # fmt: skip
    size = session.chunk_samples
    whole = len(waveform) - len(waveform) % size
    audio, tokens, speaking = [], [], []
    # the client's int16 rounding, as the server hears it
    heard = decode_audio(encode_audio(waveform[:whole]), 1 << 30)
    for start in range(0, whole, size):
        out = session.step(torch.from_numpy(heard[start : start + size])[None])
        audio.append((out.audio[0] * 32768.0).round().clamp(-32768, 32767).to(torch.int16).numpy())
        tokens.append(out.raw.feedback[0].numpy())
        speaking.append(out.speaking[0].numpy())
    return {"audio": audio, "tokens": tokens, "speaking": speaking}


def _check_against_offline(conversation, reference: dict, chunk_samples: int, what: str):
    replies = conversation.replies
    chunks = len(reference["tokens"])
    assert conversation.sent_samples // chunk_samples == chunks, what
    assert len(replies) == chunks, f"{what}: {len(replies)} replies for {chunks} whole chunks sent"
    assert [r.chunk for r in replies] == list(range(chunks)), what
    assert [r.consumed for r in replies] == [(k + 1) * chunk_samples for k in range(chunks)], what
    assert len(conversation.round_trips_ms) == chunks and min(conversation.round_trips_ms) > 0, what
    for k, reply in enumerate(replies):
        assert reply.audio.shape == (chunk_samples,), f"{what} chunk {k}: every sample written"
        assert reply.tokens == reference["tokens"][k].tolist(), f"{what} chunk {k}: tokens"
        np.testing.assert_allclose(reply.speaking, reference["speaking"][k], atol=1e-4, err_msg=f"{what} {k}")
        # Not bit-identical: the server's batched matmuls differ from one stream's in the last bits
        # (the CPU's BLAS picks its kernel by the number of rows: ~4e-6 in the mel), and Griffin-Lim's
        # phase iterations carry that to a few int16 steps (at most 4 of 74 chunks on one machine,
        # 1 on another). Another client's audio, or a chunk out of place, is thousands of steps off.
        gap = np.abs(reply.audio.astype(np.int32) - reference["audio"][k].astype(np.int32)).max()
        assert gap <= 8, f"{what} chunk {k}: audio {gap} int16 steps from the offline stream"
        assert len(reply.words) == len(reply.tokens), what


@contextlib.asynccontextmanager
async def _serving(artifact, **changes):
    options = server.ServeOptions(model=str(artifact), port=0, **changes)
    hub, _ = server.build_hub(options)
    served = await server.start(options, hub)
    try:
        yield served
    finally:
        await served.stop()


@pytest.mark.parametrize("ticks_per_chunk", [1, 4])
def test_each_client_gets_what_the_model_streams_offline_for_its_audio(tiny_artifact, ticks_per_chunk):
    """Also with the clock ticking 4 times a chunk: each stream still steps once per chunk of its audio."""
    seed = 11
    turns = [speech_like(2.3, seed), speech_like(1.7, seed + 1)]

    async def scenario():
        async with _serving(
            tiny_artifact, max_connections=3, backlog_seconds=10.0, ticks_per_chunk=ticks_per_chunk
        ) as served:
            talks = [talk(served.url, turn, listen_seconds=0.5, speed=4.0) for turn in turns]
            return await asyncio.gather(*talks), served.hub

    conversations, hub = asyncio.run(scenario())
    rows = [c.hello["stream"] for c in conversations]
    assert sorted(rows) == [0, 1], f"seed {seed}: each connection its own row, got {rows}"
    for conversation, turn in zip(conversations, turns, strict=True):
        audio = np.concatenate([turn, np.zeros(int(0.5 * RATE), np.float32)])
        reference = _offline(hub, conversation.hello["stream"], audio)
        _check_against_offline(conversation, reference, hub.chunk_samples, f"seed {seed}")


def test_a_malformed_client_is_closed_alone_and_the_others_stream_as_if_it_were_not_there(tiny_artifact):
    seed = 12
    turn = speech_like(2.0, seed)

    async def bad(url, payload, text=False):
        async with aiohttp.ClientSession() as session, session.ws_connect(url.rstrip("/") + "/ws") as ws:
            await ws.receive_json()
            await (ws.send_str(payload) if text else ws.send_bytes(payload))
            async for _ in ws:
                pass
            return ws.close_code

    async def scenario():
        limits = {"max_message_bytes": 4000, "backlog_seconds": 10.0}
        async with _serving(tiny_artifact, max_connections=4, **limits) as served:
            good = asyncio.create_task(talk(served.url, turn, listen_seconds=0.3, speed=4.0))
            await asyncio.sleep(0.2)
            codes = await asyncio.gather(
                bad(served.url, b"\x01\x02\x03"), bad(served.url, b"\x00" * 4002),
                bad(served.url, "hello", text=True),
            )  # fmt: skip
            return await good, codes, served.hub

    conversation, codes, hub = asyncio.run(scenario())
    assert codes == [1003, 1009, 1003], f"seed {seed}: odd bytes, oversized, unknown text: {codes}"
    audio = np.concatenate([turn, np.zeros(int(0.3 * RATE), np.float32)])
    reference = _offline(hub, conversation.hello["stream"], audio)
    _check_against_offline(conversation, reference, hub.chunk_samples, f"seed {seed} beside bad clients")


def test_a_full_server_refuses_the_next_connection_with_try_again_later(tiny_artifact):
    async def scenario():
        async with _serving(tiny_artifact, max_connections=1) as served:
            first = asyncio.create_task(talk(served.url, speech_like(1.0, 0), listen_seconds=0.2, speed=2.0))
            await asyncio.sleep(0.3)
            second = await talk(served.url, speech_like(0.5, 1))
            return await first, second, served.hub.stats.refused_connections

    first, second, refused = asyncio.run(scenario())
    assert len(first.replies) > 0
    assert second.close_code == 1013 and second.notices[0]["type"] == "error", second
    assert "max_connections" in second.notices[0]["message"] and refused == 1


def test_a_client_that_stops_reading_is_dropped_and_the_others_go_on(tiny_artifact):
    """A raw websocket client that sends audio faster than real time and never reads: its replies
    pile up until its queue is full, and the server hangs up on it alone."""

    async def stalled(url):
        host, port = url.split("//")[1].rstrip("/").split(":")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect((host, int(port)))
        raw.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        payload = encode_audio(np.zeros(1280, np.float32))
        frame = bytes([0x82, 0xFE]) + struct.pack(">H", len(payload)) + b"\0\0\0\0" + payload  # masked, key 0
        try:
            for _ in range(4000):  # 20 s at most; the server hangs up after ~10 s (~50 chunks' replies)
                await loop.sock_sendall(raw, frame)
                await asyncio.sleep(0.005)
        except (ConnectionError, OSError):
            return True  # the server hung up
        finally:
            raw.close()
        return False

    async def scenario():
        limits = {"max_pending_replies": 4, "backlog_seconds": 0.5}
        async with _serving(tiny_artifact, max_connections=2, **limits) as s:
            good = asyncio.create_task(talk(s.url, speech_like(4.0, 3), listen_seconds=0.2, speed=1.0))
            hung_up = await stalled(s.url)
            return hung_up, await good, s.hub.stats

    hung_up, good, stats = asyncio.run(scenario())
    assert hung_up and stats.dropped_connections == 1, stats
    assert len(good.replies) == good.sent_samples // 2560, f"{len(good.replies)} replies"


def test_reset_starts_a_new_dialogue_and_a_bursty_client_loses_only_its_own_oldest_audio(tiny_artifact):
    async def scenario():
        async with _serving(tiny_artifact, max_connections=2, backlog_seconds=0.5) as served:
            user = speech_like(2.0, 4)
            reset = talk(served.url, user, listen_seconds=0.2, speed=2.0, reset_after_samples=16000)
            burst = talk(served.url, speech_like(3.0, 5), listen_seconds=0.0, speed=50.0)
            return await asyncio.gather(reset, burst)

    reset, burst = asyncio.run(scenario())
    assert reset.notices and reset.notices[0]["type"] == "reset", reset.notices
    chunks = [r.chunk for r in reset.replies]
    restart = chunks.index(0, 1)
    assert chunks[:restart] == list(range(restart)) and chunks[restart:] == list(range(len(chunks) - restart))
    assert burst.replies[-1].dropped > 0, "a client 50x faster than real time overflows its 0.5 s backlog"
    positions = [r.consumed for r in burst.replies]
    assert positions == sorted(positions) and positions[-1] <= burst.sent_samples


def test_wire_format_round_trips_and_refuses_what_it_cannot_read():
    rng = np.random.default_rng(9)
    audio = rng.integers(-32768, 32767, 2560).astype(np.int16)
    reply = ChunkReply(3, 10240, 5, [0.25, 0.5], audio, [0, 7], [None, "drei"], 1.5)
    back = ChunkReply.decode(reply.encode())
    assert back.chunk == 3 and back.consumed == 10240 and back.words == [None, "drei"]
    np.testing.assert_array_equal(back.audio, audio, err_msg="seed 9")
    with pytest.raises(ProtocolError, match="int16"):
        decode_audio(b"\x00" * 3, 100)
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_audio(b"\x00" * 102, 100)
    with pytest.raises(ProtocolError, match="empty"):
        decode_audio(b"", 100)
    with pytest.raises(ProtocolError, match="reset"):
        decode_control('{"type": "start"}')
    samples = rng.uniform(-1, 1, 999).astype(np.float32)
    assert np.abs(decode_audio(encode_audio(samples), 1 << 20) - samples).max() <= 0.5 / 32768, "seed 9"


def test_the_command_refuses_bad_options_by_name(tmp_path, capsys):
    assert server.main(["model=" + str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert server.main(["port=70000"]) == 1
    assert "port must be" in capsys.readouterr().err
    assert server.main(["ticks_per_chunk=0"]) == 1
    assert "ticks_per_chunk must be >= 1" in capsys.readouterr().err
    assert server.main(["colour=blue"]) == 1
    assert "unknown option 'colour'" in capsys.readouterr().err


def test_the_module_serves_the_page_and_stats_until_interrupted(tiny_artifact):
    server = ServerProcess([f"model={tiny_artifact}", "port=0", "max_connections=2"])
    try:
        url = server.wait_ready(120)

        async def fetch():
            async with (
                aiohttp.ClientSession() as session,
                session.get(url) as page,
                session.get(url + "stats") as stats,
            ):
                return page.status, await page.text(), await stats.json()

        status, page, stats = asyncio.run(fetch())
        assert status == 200 and "<html" in page.lower()
        assert stats["capacity"] == 2 and stats["connections"] == 0
    finally:
        code = server.interrupt()
        assert code == 0, server.output()


def test_a_model_v1_is_served_too_without_tokens(tmp_path):
    from s2s.models.config import DuplexConfig
    from s2s.models.duplex import DuplexModel
    from s2s.pretrained import save_pretrained

    torch.manual_seed(3)
    sizes = {"dim": 32, "heads": 2, "kv_heads": 1, "encoder_layers": 1, "decoder_layers": 1}
    artifact = save_pretrained(DuplexModel(DuplexConfig(**sizes)).eval(), tmp_path / "v1")

    async def scenario():
        async with _serving(artifact, max_connections=1, backlog_seconds=5.0) as served:
            return await talk(served.url, speech_like(1.0, 8), listen_seconds=0.0, speed=4.0)

    conversation = asyncio.run(scenario())
    chunk = conversation.hello["chunk_samples"]
    assert len(conversation.replies) == conversation.sent_samples // chunk > 0
    for reply in conversation.replies:
        assert reply.tokens is None and reply.words is None and reply.audio.shape == (chunk,)
        assert len(reply.speaking) == conversation.hello["chunk_frames"]
        assert all(0.0 <= p <= 1.0 for p in reply.speaking)
