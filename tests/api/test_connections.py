"""Idle and slow connections cannot starve `hearth serve`, and a burst of requests queues rather
than being refused (server/http_server.h, --queue, --queue-timeout, --idle-timeout,
--max-connections).

Servers of their own: these tests fill the server with connections or requests.
"""
import json
import socket
import threading
import time

import httpx
from openai import OpenAI

from conftest import Server

QUESTION = [{"role": "user", "content": "Say hello."}]


def chat_body(max_tokens, **extra):
    return {"model": "smollm2", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0, **extra}


def closed_by_server(sock, timeout=3.0) -> bool:
    """True when the server has closed `sock` (it reads end of stream or a reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def read_response(sock) -> bytes:
    """The whole HTTP response on `sock` (head, then Content-Length bytes of body): one recv may
    return the head alone, and a body byte left unread would read as 'still open' below."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_500_idle_and_slow_connections_leave_room_for_a_chat_request():
    # --queue 16: 2 + 16 + 8 request threads, far fewer than the connections below (without a
    # poller of its own, httplib gave each connection a thread and the request waited 120 s).
    s = Server("--parallel", "2", "--queue", "16", "--ctx-size", "256")
    socks = []
    try:
        for i in range(500):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            if i % 5 == 0:  # slowloris: a request head begun and never finished
                c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(c)
        time.sleep(0.5)  # all accepted
        client = OpenAI(base_url=s.url + "/v1", api_key=s.api_key, max_retries=0, timeout=30)
        start = time.monotonic()
        r = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=0)
        elapsed = time.monotonic() - start
        assert r.choices[0].message.content
        assert elapsed < 2.0, f"the chat request took {elapsed:.2f} s with 500 idle connections open"
        # The idle connections were not simply dropped to make room: they are still open.
        assert not closed_by_server(socks[1], timeout=0.2)
        assert s.alive()
    finally:
        for c in socks:
            c.close()
        s.stop()
        assert s.proc.returncode == 0, s.output()


def test_idle_keep_alive_connections_are_closed_after_the_idle_timeout():
    s = Server("--parallel", "1", "--ctx-size", "256", "--idle-timeout", "1")
    try:
        kept = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(kept)
        assert head.startswith(b"HTTP/1.1 200"), head
        silent = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        start = time.monotonic()
        assert closed_by_server(kept, timeout=5)
        assert closed_by_server(silent, timeout=5)
        elapsed = time.monotonic() - start
        assert 0.7 < elapsed < 3.0, f"closed after {elapsed:.2f} s, --idle-timeout 1"
        kept.close()
        silent.close()
    finally:
        s.stop()


def test_past_max_connections_the_longest_idle_connection_is_closed():
    s = Server("--parallel", "1", "--ctx-size", "256", "--max-connections", "40")
    socks = []
    try:
        for _ in range(60):
            socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
            time.sleep(0.005)  # in order of age
        time.sleep(0.3)
        # The oldest were closed to make room; the newest are open; a request still gets in.
        assert closed_by_server(socks[0], timeout=2)
        assert not closed_by_server(socks[-1], timeout=0.2)
        r = httpx.post(s.url + "/v1/chat/completions", json=chat_body(4), headers=s.headers(), timeout=30)
        assert r.status_code == 200, r.text
    finally:
        for c in socks:
            c.close()
        s.stop()


def test_100_concurrent_requests_against_parallel_4_all_complete_with_default_settings():
    s = Server("--parallel", "4", "--ctx-size", "256")
    try:
        results = [None] * 100

        def one(i):
            try:
                r = httpx.post(s.url + "/v1/chat/completions", json=chat_body(8), headers=s.headers(), timeout=300)
                results[i] = r.status_code if r.status_code != 200 else (200, r.json()["choices"][0]["message"]["content"])
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = repr(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results if not (isinstance(r, tuple) and r[0] == 200)]
        assert not failed, f"{len(failed)} of 100 failed, e.g. {failed[:3]}"
        # Greedy and the same prompt: every answer is the same text.
        assert len({r[1] for r in results}) == 1
        assert s.metric("hearth_requests_refused_total") == 0
    finally:
        s.stop()


def test_a_request_waiting_longer_than_the_queue_timeout_gets_503_with_retry_after():
    s = Server("--parallel", "1", "--ctx-size", "2048", "--queue-timeout", "1")
    try:
        long = httpx.Client(timeout=120)
        holder = threading.Thread(target=lambda: long.post(
            s.url + "/v1/chat/completions", json=chat_body(1500, ignore_eos=True), headers=s.headers()))
        holder.start()
        deadline = time.time() + 30
        while s.metric("hearth_requests_running") < 1 and time.time() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        r = httpx.post(s.url + "/v1/chat/completions", json=chat_body(4, stream=True), headers=s.headers(), timeout=30)
        elapsed = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After")
        assert r.json()["error"]["code"] == "queue_timeout"
        assert 0.8 < elapsed < 3.0, elapsed
        assert s.metric("hearth_requests_refused_total") == 1
        # The withdrawn request left the queue: nothing waits.
        time.sleep(0.3)
        assert s.metric("hearth_requests_waiting") == 0
    finally:
        s.stop()  # ends the long request (shutdown grace), then the server
        holder.join()
