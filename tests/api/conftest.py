"""Starts real `hearth serve` processes for the API tests.

Environment: HEARTH_BIN (default build/bin/hearth), HEARTH_TEST_MODEL (default
models/SmolLM2-135M-Instruct.Q4_1.gguf). Tests are skipped when the model is missing.
"""
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("HEARTH_BIN", ROOT / "build" / "bin" / "hearth"))
MODEL = Path(os.environ.get("HEARTH_TEST_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
API_KEY = "sk-hearth-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra: str, api_key: str | None = API_KEY, model: Path | None = None):
        if not MODEL.exists():
            pytest.skip(f"model {MODEL} not fetched (scripts/get-model.sh smollm2)")
        model = model or MODEL
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        args = [str(BIN), "serve", "-m", str(model), "--port", str(self.port), "--alias", "smollm2", *extra]
        if api_key:
            args += ["--api-key", api_key]
        self.log = open(f"/tmp/hearth-api-test-{self.port}.log", "w+")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hearth serve exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("hearth serve did not become healthy: " + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=5).status_code == 200

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server("--parallel", "8", "--queue", "16", "--ctx-size", "512")
    yield s
    assert s.proc.poll() is None, "the server died during the tests: " + s.output()
    s.stop()
    assert s.proc.returncode == 0, s.output()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)
