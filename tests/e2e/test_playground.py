"""The playground page (``GET /playground``, also ``/web``) in a real browser, Debian's chromium driven by Playwright, against the API and
workers as real processes with API keys on: the page lists the models and voices, speaks (mp3 played as it streams
through MediaSource, wav played when complete), shows the first-byte and total times, offers the audio as a download
that decodes to speech, highlights the word being spoken from the job's word timestamps, queues a job and follows it to the end, and shows the API's error messages (no key, empty
text, text over the limit). The page's Content-Security-Policy stays on: any request it made elsewhere would fail."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from producer_api.auth import new_token
from schemas.validation import MAX_INPUT_CHARS
from tests.stack import Stack
from voicenote.settings import ApiKey, ApiSettings

# Debian's chromium, never a browser downloaded by Playwright (nothing is fetched at run time).
CHROMIUM = os.environ.get("VOICENOTE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Skipped before any backend or process starts.
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                                            ".ci/run does): the playground's browser tests need it")]
TEXT = ("The playground speaks what you type. The first sentence is played while the rest is still being made. "
        "Each segment arrives on the stream as soon as the worker finishes it. The browser appends it to the buffer it "
        "is playing from, so the listener hears the start of a long note almost at once. Nothing waits for the end. "
        "And when the last segment is in, the download holds the whole note, a file like any other.")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        # Autoplay without a gesture: Speak is clicked, but playback starts after awaits; muted: no sound device.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def token(stack: Stack) -> str:
    token, digest = new_token()
    stack.settings = stack.settings.model_copy(update={"api": ApiSettings(keys=[ApiKey(name="visitor", sha256=digest)])})
    return token


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []  # console errors (a CSP violation is one), uncaught exceptions, failed answers

    def on_console(message: ConsoleMessage) -> None:
        # A failed answer is logged as "Failed to load resource"; it is recorded with its URL below.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    page.on("console", on_console)
    page.on("response", lambda response: problems.append(f"{response.status} {response.request.method} {response.url}")
            if response.status >= 400 else None)
    page.on("requestfailed", lambda request: problems.append(f"failed {request.method} {request.url}: {request.failure}"))
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    try:
        yield page, problems
    finally:
        context.close()


def _wait_state(page: Page, *states: str, timeout_s: float = 180) -> str:
    # Functions, not expressions: an expression is eval'ed, which the page's CSP refuses.
    page.wait_for_function("states => states.includes(document.body.dataset.state)", arg=list(states), timeout=timeout_s * 1000)
    return str(page.evaluate("document.body.dataset.state"))


def _login(page: Page, stack: Stack, token: str, *, navigate: bool = True) -> None:
    if navigate:
        page.goto(f"{stack.base_url}/playground")
    page.fill("#key", token)
    page.click("#reload")
    assert _wait_state(page, "ready", "error", timeout_s=30) == "ready", page.text_content("#error")


def _ms(page: Page, element: str) -> int:
    text = page.text_content(element) or ""
    match = re.fullmatch(r"(\d+) ms", text)
    assert match, f"{element} shows {text!r}, not a time"
    return int(match.group(1))


def _download(page: Page, tmp_path: Path, link: str = "#download") -> bytes:
    with page.expect_download() as info:
        page.click(link)
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return target.read_bytes()


def _speech_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float64) for f in container.decode(stream)])
        rate = stream.rate
    scale = 32768.0 if np.abs(samples).max() > 2 else 1.0
    assert float(np.sqrt(np.mean((samples / scale) ** 2))) > 0.01, "silent audio"
    return len(samples) / rate


def test_speak_streams_plays_and_downloads(stack: Stack, token: str, page: tuple[Page, list[str]], tmp_path: Path) -> None:
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    p, problems = page
    _login(p, stack, token)
    models = p.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert "tts-1" in models, models
    voices = p.eval_on_selector_all("#voice option", "options => options.map(o => o.value)")
    assert {"alloy", "nova", "en_US-joe-medium"} <= set(voices), voices
    assert p.input_value("#voice") == "alloy"

    # mp3: played while it streams (MediaSource).
    p.fill("#text", TEXT)
    p.select_option("#format", "mp3")
    p.click("#speak")
    assert _wait_state(p, "done", "error") == "done", p.text_content("#error")
    assert p.text_content("#error") == ""
    ttfb, total = _ms(p, "#ttfb"), _ms(p, "#total")
    assert 0 < ttfb <= total
    received = int((p.text_content("#bytes") or "0").replace(",", ""))
    assert received > 10_000, received
    assert "MediaSource" in (p.text_content("#mode") or "") and "streamed by the server" in (p.text_content("#mode") or "")
    assert re.fullmatch(r"job_\S+", p.text_content("#jobid") or ""), p.text_content("#jobid")
    # It plays: the clock of the audio element moves, and the browser reported no media error.
    p.wait_for_function("() => document.getElementById('audio').currentTime > 0.2", timeout=30_000)
    assert p.evaluate("document.getElementById('audio').error") is None
    # Heard before the last byte arrived: played as it streamed, not after.
    sound = _ms(p, "#sound")
    assert ttfb <= sound < total, (ttfb, sound, total)
    mp3 = _download(p, tmp_path)
    assert len(mp3) == received
    assert _speech_seconds(mp3) > 10

    # Word timestamps (ticked by default for a model that times words): the input's words in order, and the one being
    # spoken is highlighted as the audio plays: the highlighted word's span holds the audio element's clock.
    shown = p.eval_on_selector_all("#words span", "spans => spans.map(s => s.textContent)")
    assert shown == TEXT.split(), shown
    assert re.fullmatch(rf"{len(shown)} words .*", p.text_content("#wordinfo") or ""), p.text_content("#wordinfo")
    # Read in the same frame that finds a lit word (between two words, none is lit).
    lit = p.wait_for_function("""() => { const on = document.querySelector('#words span.on');
                                          const a = document.getElementById('audio');
                                          return on && {word: on.textContent, start: Number(on.dataset.start), t: a.currentTime}; }""",
                              timeout=30_000).json_value()
    assert lit["start"] <= lit["t"] + 0.1, lit
    assert p.eval_on_selector_all("#words span.on", "spans => spans.length") <= 1
    if os.environ.get("VOICENOTE_UPDATE_SCREENSHOT"):  # make playground-screenshot: the picture in docs
        p.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "playground.png"), full_page=True)

    # wav: played when complete, from the whole body; without timestamps, none are shown.
    p.uncheck("#timestamps")
    p.select_option("#format", "wav")
    p.click("#speak")
    assert _wait_state(p, "done", "error") == "done", p.text_content("#error")
    assert "played when complete" in (p.text_content("#mode") or "")
    assert p.eval_on_selector_all("#words span", "spans => spans.length") == 0 and p.text_content("#wordinfo") == "–"
    wav = _download(p, tmp_path)
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert abs(_speech_seconds(wav) - _speech_seconds(mp3)) < 0.5
    p.wait_for_function("() => document.getElementById('audio').currentTime > 0.2", timeout=30_000)

    # A queued job, followed to its end.
    p.fill("#text", "A queued note from the playground.")
    p.click("#queue")
    assert _wait_state(p, "job-succeeded", "job-failed", "job-cancelled", "error") == "job-succeeded", p.text_content("#error")
    assert (p.text_content("#async-status") or "").startswith("succeeded")
    assert re.fullmatch(r"job_\S+", p.text_content("#async-id") or "")
    assert _speech_seconds(_download(p, tmp_path, "#async-audio")) > 1

    # No console error (nothing blocked by the CSP), no exception, and no failed request but the first listing of the
    # models, before the key was typed (how the page learns that this server needs one).
    assert problems == [f"401 GET {stack.base_url}/v1/models"], problems


def test_a_voice_is_registered_from_a_clip(stack: Stack, token: str, page: tuple[Page, list[str]], tmp_path: Path) -> None:
    """The "Register a voice" form: a clip of real speech (espeak-ng) and its transcript posted as multipart with the
    key; the page shows the new voice's id, and a clip too short is refused with the API's reason."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    transcript = "This clip of speech becomes a voice that the playground registers."
    clip = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(clip), transcript], check=True, timeout=60)
    short = tmp_path / "short.wav"
    subprocess.run(["espeak-ng", "-w", str(short), "Hi."], check=True, timeout=60)
    stack.start_api()  # registration needs the API and the store only
    p, problems = page
    _login(p, stack, token)
    p.set_input_files("#clip", str(short))
    p.fill("#transcript", "Hi.")
    p.click("#register")
    assert _wait_state(p, "registered", "error", timeout_s=30) == "error"
    message = p.text_content("#error") or ""
    assert "HTTP 400" in message and "[clip_too_short]" in message, message

    p.set_input_files("#clip", str(clip))
    p.fill("#transcript", transcript)
    p.fill("#clipname", "espeak")
    p.click("#register")
    assert _wait_state(p, "registered", "error", timeout_s=30) == "registered", p.text_content("#error")
    shown = p.text_content("#voiceid") or ""
    assert re.fullmatch(r"vc_[0-9a-f]{24} \(espeak\), \d+\.\d s", shown), shown
    voice_id = shown.split()[0]
    listed = httpx.get(f"{stack.base_url}/v1/audio/voices/{voice_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200 and listed.json()["transcript"] == transcript, listed.text
    assert problems == [f"401 GET {stack.base_url}/v1/models", f"400 POST {stack.base_url}/v1/audio/voices"], problems


def test_api_errors_are_shown(stack: Stack, token: str, page: tuple[Page, list[str]]) -> None:
    stack.start_api()  # bad requests are refused before anything is published: no worker needed
    p, problems = page
    p.goto(f"{stack.base_url}/web")
    # No key: the models cannot be listed, and the page says why and what to do.
    assert _wait_state(p, "ready", "error", timeout_s=30) == "error"
    message = p.text_content("#error") or ""
    assert "HTTP 401" in message and "missing API key" in message and "enter it above" in message, message

    _login(p, stack, token, navigate=False)
    assert p.text_content("#error") == ""
    p.fill("#text", "   ")
    p.click("#speak")
    assert _wait_state(p, "done", "error", timeout_s=30) == "error"
    message = p.text_content("#error") or ""
    assert "HTTP 400" in message and "[empty_utterance]" in message and "(param: input)" in message, message
    assert p.text_content("#bytes") == "–" and p.is_hidden("#download")

    p.fill("#text", "a" * (MAX_INPUT_CHARS + 1))
    assert p.text_content("#chars") == f"{MAX_INPUT_CHARS + 1:,}"
    p.click("#speak")
    assert _wait_state(p, "done", "error", timeout_s=30) == "error"
    message = p.text_content("#error") or ""
    assert "HTTP 400" in message and f"at most {MAX_INPUT_CHARS} characters" in message and "(param: input)" in message, message
    # The refused calls, and nothing else.
    base = stack.base_url
    assert problems == [f"401 GET {base}/v1/models", f"400 POST {base}/v1/audio/speech", f"400 POST {base}/v1/audio/speech"], problems


def test_without_keys_the_page_needs_none(stack: Stack, page: tuple[Page, list[str]]) -> None:
    """As `make run` serves (anonymous, explicitly): the page lists the models at once, with the key field empty."""
    stack.start_api()
    p, problems = page
    p.goto(f"{stack.base_url}/web/")
    assert _wait_state(p, "ready", "error", timeout_s=30) == "ready", p.text_content("#error")
    assert p.input_value("#key") == "" and p.text_content("#error") == ""
    assert "tts-1" in p.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert not p.is_disabled("#speed")  # the CPU models honour speed
    assert not p.is_disabled("#timestamps") and p.is_checked("#timestamps")  # and time words
    assert problems == [], problems
