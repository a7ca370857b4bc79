"""A minimal Chrome DevTools Protocol client: load a page in headless Chromium, collect console
errors and dialogs, evaluate an expression, take a screenshot (of the page or of one element), and
print a page to PDF. Test helper only."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--remote-debugging-port=0",
    "--window-size=1400,1600",
]
#: the window width the report is read at (issue 19: a researcher's 1400 px browser window)
WIDTH = 1400
#: CSS pixels across an A4 page inside the report's print margins (210 mm - 2 x 12 mm, at 96 px per inch)
A4_PRINT_WIDTH = round((210 - 24) / 25.4 * 96)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def load(
    url: str,
    expression: str,
    screenshot: Path,
    timeout: float = 60.0,
    *,
    width: int = WIDTH,
    media: str | None = None,
    clip_selector: str | None = None,
) -> dict[str, Any]:
    """Open ``url`` in a ``width``-pixel window (with ``media``: emulate that CSS media, e.g. "print");
    return {"errors": [...], "dialogs": [...], "value": <expression result>, "height": ..., "clip": ...}.
    The screenshot is of the page, or of the element ``clip_selector`` names ("clip": its box)."""
    import websocket

    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.time() + timeout
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://127.0.0.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        assert port, "chromium did not start its DevTools endpoint"
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        counter = iter(range(1, 10**6))
        events: list[dict[str, Any]] = []

        def call(method: str, **params: Any) -> dict[str, Any]:
            mid = next(counter)
            ws.send(json.dumps({"id": mid, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == mid:
                    return msg.get("result", {})
                events.append(msg)

        for domain in ("Runtime", "Log", "Page"):
            call(f"{domain}.enable")
        call("Emulation.setDeviceMetricsOverride", width=width, height=1600, deviceScaleFactor=1, mobile=False)
        if media:
            call("Emulation.setEmulatedMedia", media=media)
        call("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in events) and time.time() < deadline:
            events.append(json.loads(ws.recv()))
        value = call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
        metrics = call("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, 16000), "scale": 1}
        if clip_selector:
            box = call(
                "Runtime.evaluate",
                expression=f"""(() => {{ const r = document.querySelector({json.dumps(clip_selector)})
                    .getBoundingClientRect(); return {{x: r.left + scrollX, y: r.top + scrollY,
                    width: r.width, height: r.height}}; }})()""",
                returnByValue=True,
            )["result"]["value"]
            clip = {**box, "scale": 1}
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
        errors = [
            e
            for e in events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]
        dialogs = [e for e in events if e.get("method") == "Page.javascriptDialogOpening"]
        return {"errors": errors, "dialogs": dialogs, "value": value, "height": height, "clip": clip}
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def print_to_pdf(path: Path, pdf: Path, timeout: float = 120.0) -> bytes:
    """``chromium --headless --print-to-pdf`` of a local page (its print stylesheet); the PDF's bytes."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run(
            [
                chromium(),
                *[f for f in FLAGS if not f.startswith("--remote-debugging")],
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={pdf}",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return pdf.read_bytes()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
