"""The dashboard in a real browser: `hearth serve --local-stages 2`, its page (GET /) loaded in
headless Chromium (Debian's `chromium`, driven over the DevTools protocol): the page shows both
stages with their layer ranges, and a message typed into its chat box gets an answer streamed
into the page. And GET /v1/cluster, the JSON the page polls. Skipped without chromium."""
import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import Server

websocket = pytest.importorskip("websocket")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium, one page, commands over the DevTools protocol."""

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.time() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json() if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def two_stages():
    s = Server("--parallel", "2", "--ctx-size", "512", "--local-stages", "2")
    yield s
    s.stop()


def test_cluster_json(two_stages):
    s = two_stages
    c = httpx.get(s.url + "/v1/cluster", timeout=10).json()  # open, as /health is
    assert c["model"] == "smollm2" and c["state"] == "serving"
    stages = c["stages"]
    assert len(stages) == 2
    assert stages[0]["first"] == 0 and stages[0]["last"] == stages[1]["first"] and stages[1]["last"] == c["n_layers"]
    for st in stages:
        assert st["address"].startswith("127.0.0.1:") and st["backend"] == "cpu"
        assert 0 < st["memory_used"] <= st["memory_budget"] and st["bandwidth_gbps"] > 0
    assert {n["role"].split(",")[0] for n in c["nodes"]} == {"stage 0", "stage 1"}
    # Tokens/s and busy shares come from what ran between two calls.
    r = httpx.post(s.url + "/v1/chat/completions", headers=s.headers(), timeout=120, json={
        "model": "smollm2", "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 48,
        "ignore_eos": True})
    assert r.status_code == 200
    c2 = httpx.get(s.url + "/v1/cluster", timeout=10).json()
    assert c2["generated_tokens"] >= c["generated_tokens"] + 48
    assert c2["tokens_per_second"] > 0
    assert all(0 < st["busy_share"] <= 1 for st in c2["stages"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_the_page_shows_the_stages_and_chats(two_stages, tmp_path):
    s = two_stages
    c = httpx.get(s.url + "/v1/cluster", timeout=10).json()
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=760, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=s.url + "/")
        browser.wait_for("document.readyState === 'complete'")
        # Both stages, with their layer ranges, as the page renders them.
        rows = browser.wait_for("(() => { const r = [...document.querySelectorAll('#stages tbody tr')]"
                                ".map(tr => [...tr.cells].map(td => td.textContent));"
                                " return r.length === 2 ? r : null; })()")
        for row, stage in zip(rows, c["stages"]):
            assert row[1] == stage["address"]
            assert row[3] == f"[{stage['first']}, {stage['last']})"
        assert browser.eval("document.getElementById('state').textContent") == "serving"
        # A message typed into the chat box; the answer streams into the page.
        browser.eval(f"document.getElementById('key').value = {json.dumps(s.api_key)}")
        browser.eval("document.getElementById('msg').value = 'Tell me a short story about a fox.'")
        browser.eval("document.getElementById('send').click()")
        lengths = set()
        deadline = time.time() + 120
        while time.time() < deadline:
            state = browser.eval("(() => { const a = document.querySelector('.model .answer');"
                                 " return a ? [a.textContent.length, document.querySelector('.model').dataset.done || ''] : null; })()")
            if state:
                lengths.add(state[0])
                if state[1] == "1":
                    break
            time.sleep(0.03)
        answer = browser.eval("document.querySelector('.model .answer').textContent")
        assert answer and not answer.startswith("error"), answer
        assert len([n for n in lengths if n > 0]) > 1, f"the answer did not stream: {sorted(lengths)}"
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        out = Path(os.environ.get("HEARTH_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
        out.write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
