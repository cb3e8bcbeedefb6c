"""A local cluster (`--local-stages 2`) whose worker process dies: /health says truthfully that
it is recovering (503, a reason, Retry-After) rather than 200 "ok", the server re-plans onto the
worker left and serves the same text, and the dead worker process is started again and rejoins
the plan: a local cluster heals itself."""
import os
import signal
import time
from pathlib import Path

import httpx


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def greedy(s, content="Name a color.") -> str:
    r = httpx.post(s.url + "/v1/chat/completions", headers=s.headers(), timeout=60,
                   json={"messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def stages(s) -> int:
    return sum(n["role"].startswith("stage") for n in httpx.get(s.url + "/health", timeout=5).json().get("nodes", []))


def test_a_dead_local_worker_is_reported_replanned_around_and_restarted():
    from conftest import Server

    s = Server("--parallel", "1", "--ctx-size", "256", "--local-stages", "2", "--no-fallback-local")
    try:
        health = httpx.get(s.url + "/health", timeout=5)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok" and stages(s) == 2
        want = greedy(s)
        workers = children(s.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # the last stage's worker, as a laptop going to sleep
        seen = []
        deadline = time.time() + 15
        while time.time() < deadline:
            health = httpx.get(s.url + "/health", timeout=5)
            seen.append(health.status_code)
            if health.status_code != 200:
                body = health.json()
                assert body["status"] == "recovering", body
                assert body["error"]["code"] == "recovering"
                assert "re-planning" in body["error"]["message"]
                assert int(health.headers["Retry-After"]) > 0
            elif 503 in seen:
                break
            time.sleep(0.02)
        assert 503 in seen and seen[-1] == 200, seen
        assert s.proc.poll() is None
        assert greedy(s) == want
        # The watcher starts the dead worker again and the plan takes it back (two stages).
        deadline = time.time() + 30
        while time.time() < deadline and not (len(children(s.proc.pid)) == 2 and stages(s) == 2):
            time.sleep(0.2)
        assert len(children(s.proc.pid)) == 2 and stages(s) == 2, httpx.get(s.url + "/health").text
        assert "restarted 1 local worker" in s.output()
        assert greedy(s) == want
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.output()
