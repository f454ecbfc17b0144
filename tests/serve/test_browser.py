"""The page of `python -m s2s.serve` in a real browser: headless Chromium, driven over the DevTools
protocol, talks to a server of a tiny random-weight model through its fake microphone (a synthesized
user saying digits, looped) and plays the replies; the page proves it sent the audio, received and
played the model's, and measured round trips (~15-30 s on 2 cores).

Chromium's headless mode renders Web Audio on a fake output device that runs in real time, so the
AudioContext advances without a sound card; its fake capture device reads the wav file.
"""

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from base64 import b64decode
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
import torch

from s2s.data.audio import resample
from s2s.data.espeak import Espeak, Voice
from s2s.serve.process import ServerProcess, stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SERVER_READY_SECONDS = 120
PAGE_SECONDS = 60
RATE = 16000


def _user_wav(path: Path) -> Path:
    """~3 s at 16 kHz: a user saying digits with espeak (two phrases with a pause), then silence."""
    espeak = Espeak()
    try:
        voice = Voice("en-us+m3", rate=170)
        phrases = [espeak.speak(text, voice) for text in ("three seven", "five nine two")]
    finally:
        espeak.close()
    pieces = [np.zeros(int(0.3 * RATE), np.float32)]
    for speech in phrases:
        audio = torch.from_numpy(speech.samples.astype(np.float32) / 32768.0)
        pieces += [resample(audio, speech.sample_rate, RATE).numpy(), np.zeros(int(0.4 * RATE), np.float32)]
    audio = np.concatenate(pieces)
    audio = 0.5 * audio / max(1e-6, float(np.abs(audio).max()))
    if len(audio) < 3 * RATE:
        audio = np.pad(audio, (0, 3 * RATE - len(audio)))
    soundfile.write(str(path), audio, RATE, subtype="PCM_16")
    return path


class Browser:
    """Headless Chromium with a fake microphone playing `wav`, its DevTools port read from its profile."""

    def __init__(self, wav: Path, home: Path, log: Path):
        self.home = home  # the profile and chromium's temporary files, removed by stop()
        self.profile = home / "profile"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        flags = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--mute-audio",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
            "--window-size=1200,900", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
            "about:blank",
        ]  # fmt: skip
        self.log = log
        env = {**os.environ, "TMPDIR": str(home / "tmp")}
        with open(log, "wb") as out:
            self.process = subprocess.Popen([CHROMIUM, *flags], stdout=out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def devtools_port(self, timeout: float = 30) -> int:
        path = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            exited = self.process.poll()
            assert exited is None, f"chromium exited ({exited}):\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"chromium wrote no {path} within {timeout} s:\n{self.output()}")

    def stop(self):
        stop_process(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


class DevTools:
    """A minimal DevTools protocol client over one page target's websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self.socket = socket
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self.waiting.pop(data.get("id"), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self.socket.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout)
        assert "error" not in reply, f"{method} failed: {reply['error']}"
        return reply.get("result", {})

    async def evaluate(self, expression: str, user_gesture: bool = False):
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
            userGesture=user_gesture,
        )  # fmt: skip
        assert "exceptionDetails" not in result, f"{expression!r} threw: {result['exceptionDetails']}"
        return result["result"].get("value")

    def page_errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries (a favicon 404 aside)."""
        errors = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                description = details.get("exception", {}).get("description") or details["text"]
                errors.append(f"uncaught: {description}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                values = (str(a.get("value", a.get("description"))) for a in params["args"])
                errors.append("console.error: " + " ".join(values))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                if "favicon" not in entry.get("url", "") + entry.get("text", ""):
                    errors.append(f"log: {entry['text']} ({entry.get('url', '')})")
        return errors


async def _page_target(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
        targets = await response.json(content_type=None)
    pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
    if pages:
        return pages[0]["webSocketDebuggerUrl"]
    async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
        return (await response.json(content_type=None))["webSocketDebuggerUrl"]


def _summary(state: dict) -> str:
    keys = ("state", "contextRate", "sentSamples", "repliesReceived", "replyAudioSamples",
            "nonSilentReplySamples", "playedSamples", "underruns", "dropped", "resets", "lastChunk",
            "roundTrip", "errors", "closeCode", "closeReason")  # fmt: skip
    return json.dumps({key: state.get(key) for key in keys}) if isinstance(state, dict) else repr(state)


def _done(state: dict) -> bool:
    return (
        state["sentSamples"] > RATE
        and state["repliesReceived"] >= 10
        and state["playedSamples"] > 0
        and state["roundTrip"]["count"] >= 1
    )


async def drive(
    url: str, port: int, screenshots: list[Path], picture_seconds: float, seconds: float = PAGE_SECONDS
) -> tuple[dict, list]:
    """Open the page, press Start, wait until it has talked to the server, take the picture once
    `picture_seconds` of audio are sent, reset the dialogue, stop; (window.s2s then, page errors)."""
    async with aiohttp.ClientSession() as session:
        target = await _page_target(session, port)
        async with session.ws_connect(target, max_msg_size=0) as socket:
            tools = DevTools(socket)
            for domain in ("Page", "Runtime", "Log"):
                await tools.send(f"{domain}.enable")
            size = {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False}
            await tools.send("Emulation.setDeviceMetricsOverride", **size)
            await tools.send("Page.navigate", url=url)
            deadline = time.monotonic() + 30
            loaded = "typeof window.s2s === 'object' && document.readyState === 'complete'"
            while not await tools.evaluate(loaded):
                assert time.monotonic() < deadline, f"the page at {url} never loaded: {tools.page_errors()}"
                await asyncio.sleep(0.1)
            assert await tools.evaluate("window.s2s.state") == "idle"
            await tools.evaluate("document.getElementById('start').click()", user_gesture=True)

            async def until(done, what: str, seconds: float) -> dict:
                deadline = time.monotonic() + seconds
                while not done(state := await tools.evaluate("window.s2s")):
                    assert state["state"] in ("starting", "running"), f"the page stopped: {_summary(state)}"
                    assert time.monotonic() < deadline, (
                        f"after {seconds:.0f} s the page had not {what}: {_summary(state)}; "
                        f"page errors: {tools.page_errors()}"
                    )
                    await asyncio.sleep(0.25)
                return state

            await until(_done, "talked to the server", seconds)
            state = await until(lambda s: s["sentSamples"] >= picture_seconds * RATE, "sent enough audio", 30)
            shot = b64decode((await tools.send("Page.captureScreenshot", format="png"))["data"])
            for path in screenshots:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(shot)

            # Reset dialogue: the server answers with a reset notice and the new dialogue's chunks from 0.
            replies = state["repliesReceived"]
            await tools.evaluate("document.getElementById('reset').click()", user_gesture=True)
            answered = lambda s: s["resets"] >= 1 and s["repliesReceived"] >= replies + 3
            after = await until(answered, "heard the reset answered", 15)
            assert after["lastChunk"] < after["repliesReceived"] - replies, _summary(after)

            await tools.evaluate("document.getElementById('stop').click()", user_gesture=True)
            deadline = time.monotonic() + 10
            while (stopped := await tools.evaluate("window.s2s.state")) != "stopped":
                assert time.monotonic() < deadline, f"Stop left the page in state {stopped!r}"
                await asyncio.sleep(0.1)
            errors = tools.page_errors()
            tools.reader.cancel()
            return after, errors


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (scripts/install_chromium.sh installs one)")
def test_the_page_talks_to_the_model_in_a_real_browser(tiny_artifact, tmp_path):
    wav = _user_wav(tmp_path / "user.wav")
    model = os.environ.get("S2S_BROWSER_MODEL", tiny_artifact)  # for the docs: a trained model
    server = ServerProcess([f"model={model}", "port=0", "device=cpu", "max_connections=2"])
    browser = None
    try:
        url = server.wait_ready(SERVER_READY_SECONDS)
        # Chromium puts unix sockets in its profile and TMPDIR, whose paths must stay short: not tmp_path.
        browser = Browser(wav, Path(tempfile.mkdtemp(prefix="s2s-chromium-")), tmp_path / "chromium.log")
        screenshots = [tmp_path / "serve.png"]
        if os.environ.get("S2S_SCREENSHOT"):  # for the docs: a fuller timeline
            screenshots.append(Path(os.environ["S2S_SCREENSHOT"]))
        picture_seconds = 9.0 if len(screenshots) > 1 else 4.0
        state, errors = asyncio.run(drive(url, browser.devtools_port(), screenshots, picture_seconds))
    except BaseException:
        print("server output:\n" + server.output())
        if browser is not None:
            print("chromium output:\n" + browser.output())
        raise
    finally:
        if browser is not None:
            browser.stop()
        server.stop()

    round_trip = state["roundTrip"]
    figures = (
        f"round trip over {round_trip['count']} replies: p50 {round_trip['p50']} ms, "
        f"p99 {round_trip['p99']} ms "
        f"(latest {round_trip['latest']} ms); context {state['contextRate']} Hz, "
        f"sent {state['sentSamples'] / RATE:.1f} s, {state['repliesReceived']} replies, "
        f"played {state['playedSeconds']:.2f} s, {state['underruns']} underruns; screenshot {screenshots[0]}"
    )
    print(figures)
    assert state["hello"]["sample_rate"] == RATE and state["hello"]["format"] == "s2s-serve/1", figures
    assert state["replyAudioSamples"] >= 10 * state["hello"]["chunk_samples"], figures
    assert 0 < round_trip["p50"] <= round_trip["p99"] < 10_000, figures
    assert state["errors"] == [], f"the page reported errors: {state['errors']}; {figures}"
    assert errors == [], f"the page's console had errors: {errors}; {figures}"
