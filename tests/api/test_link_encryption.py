"""Nothing of a request crosses the links between stages in clear: a 2-stage local cluster serves
a chat request while tcpdump captures the loopback traffic between the processes (the HTTP
port left out: the client's own request is plaintext by design). The prompt's and the answer's
token ids, as the Batch and Sampled messages would carry them (little-endian int32: the prompt
as runs, the answer one token per step), must not appear in the capture; with --insecure-plaintext on the same setup they do (the control
that the search can find them). Needs root and tcpdump (scripts/setup.sh installs it)."""
import os
import shutil
import signal
import struct
import subprocess
import time

import httpx
import pytest

from conftest import Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                                reason="needs root and tcpdump to capture loopback traffic")

PROMPT = "Remember the code word: marmalade zeppelin quartz. Now write a short poem about the sea."


def token_runs(ids, n=4):
    """Every run of n consecutive token ids as the wire writes them (int32, little-endian)."""
    return [b"".join(struct.pack("<i", t) for t in ids[i:i + n]) for i in range(0, max(1, len(ids) - n + 1))]


def capture_request(tmp_path, *extra):
    s = Server("--parallel", "1", "--ctx-size", "512", "--local-stages", "2", *extra)
    pcap = tmp_path / f"links{len(extra)}.pcap"
    # Everything on loopback but the HTTP port: the links between the coordinator and its stages.
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-B", "8192", "-s", "0", "-w", str(pcap), "tcp", "and", "not", "port",
                             str(s.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # tcpdump is listening
        r = httpx.post(s.url + "/v1/chat/completions", headers=s.headers(), timeout=120, json={
            "model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24,
            "temperature": 0})
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        ids = lambda text, special: httpx.post(s.url + "/tokenize", headers=s.headers(), timeout=30,
                                               json={"content": text, "add_special": special}).json()["tokens"]
        prompt_ids, answer_ids = ids(PROMPT, False), ids(answer, False)
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
        s.stop()
    data = pcap.read_bytes()
    assert len(data) > 10_000, "the capture holds the links' traffic"
    return data, prompt_ids, answer_ids


def found(data, ids):
    return sum(1 for run in token_runs(ids) if run in data)


def found_one_by_one(data, ids):
    """Generated tokens travel one per step: each id alone (those >= 1000, so that no length,
    position or small count in a header can match by chance)."""
    return sum(1 for t in set(ids) if t >= 1000 and struct.pack("<i", t) in data)


def test_no_token_of_the_request_crosses_a_link_in_clear(tmp_path):
    data, prompt_ids, answer_ids = capture_request(tmp_path)
    assert found(data, prompt_ids) == 0, "the prompt's token ids are on the wire in clear"
    assert found_one_by_one(data, answer_ids) == 0, "the answer's token ids are on the wire in clear"
    # The control: with plaintext links the same searches find them.
    plain, prompt_ids, answer_ids = capture_request(tmp_path, "--insecure-plaintext")
    assert found(plain, prompt_ids) > len(prompt_ids) // 2
    # (A loaded machine's capture may drop packets: one answer token found in clear is enough to
    # show that the search would see them.)
    big = {t for t in answer_ids if t >= 1000}
    assert big and found_one_by_one(plain, answer_ids) >= 1
