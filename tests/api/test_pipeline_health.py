"""A pipeline whose worker dies: the server stays up and /health says truthfully that it cannot
serve (503, a reason naming the failure, Retry-After) instead of 200 "ok"."""
import os
import signal
import time
from pathlib import Path

import httpx
import pytest


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def test_health_is_503_after_a_stage_dies_and_the_server_stays_up():
    from conftest import Server

    s = Server("--parallel", "1", "--ctx-size", "256", "--local-stages", "2")
    try:
        health = httpx.get(s.url + "/health", timeout=5)
        assert health.status_code == 200, health.text
        workers = children(s.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # the last stage's worker, as a laptop going to sleep
        deadline = time.time() + 15
        while time.time() < deadline:
            health = httpx.get(s.url + "/health", timeout=5)
            if health.status_code != 200:
                break
            time.sleep(0.1)
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["status"] == "failed"
        assert body["error"]["code"] == "pipeline_failed"
        assert "restarted" in body["error"]["message"]
        assert int(health.headers["Retry-After"]) > 0
        # Still up: the API answers, and a request gets an error rather than a hang.
        assert s.proc.poll() is None
        models = httpx.get(s.url + "/v1/models", headers=s.headers(), timeout=5)
        assert models.status_code == 200
        r = httpx.post(s.url + "/v1/chat/completions", headers=s.headers(), timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code >= 500, r.text
        assert s.proc.poll() is None
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.output()
