"""SIGTERM stops `hearth serve` within a second even while clients hold idle keep-alive
connections (httplib alone waits out its 30 s keep-alive timeout), and the exit code is 0.

A server of its own (the session server must stay up for the other tests).
"""
import http.client
import signal
import socket
import time

from conftest import Server


def test_sigterm_with_idle_keep_alive_connections_stops_within_a_second():
    s = Server("--parallel", "2", "--ctx-size", "256")
    conns = []
    try:
        # A connection kept alive after a whole request and response...
        kept = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        kept.request("GET", "/v1/models", headers={**s.headers(), "Connection": "keep-alive"})
        r = kept.getresponse()
        assert r.status == 200
        r.read()
        assert not r.will_close  # the server keeps it open
        conns.append(kept)
        # ... one that has sent nothing yet, and one in the middle of a request's head.
        idle = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        conns.append(idle)
        partial = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        conns.append(partial)
        time.sleep(0.2)  # all three accepted and waiting

        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=30)
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, f"took {elapsed:.2f} s to stop:\n{s.output()}"
        assert s.proc.returncode == 0, s.output()
        # The kept-alive connection was closed by the server, not left dangling.
        assert kept.sock.recv(1) == b""
    finally:
        for c in conns:
            c.close()
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
        s.log.close()


def start_stream(s, max_tokens):
    """Starts a streamed chat completion; returns the response once its first content arrived."""
    import httpx

    client = httpx.Client(timeout=60)
    req = client.build_request(
        "POST", s.url + "/v1/chat/completions", headers=s.headers(),
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a long story."}],
              "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True})
    r = client.send(req, stream=True)
    assert r.status_code == 200
    lines = r.iter_lines()
    for line in lines:
        if line.startswith("data: ") and '"content"' in line and '"content":""' not in line:
            break
    return client, r, lines


def stopped_server(*extra):
    return Server("--parallel", "2", "--ctx-size", "2048", *extra)


def test_a_stream_longer_than_the_grace_ends_with_an_error_event_then_the_server_exits():
    import json

    s = stopped_server("--shutdown-grace", "1")
    try:
        client, r, lines = start_stream(s, 1900)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        # Meanwhile no new connection is accepted.
        time.sleep(0.3)
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
            refused = False
        except OSError:
            refused = True
        assert refused, "a new connection was accepted after SIGTERM"
        events = [line[6:] for line in lines if line.startswith("data: ")]
        ended = time.monotonic() - start
        r.close()
        client.close()
        assert events, "the stream carried nothing after SIGTERM"
        assert "[DONE]" not in events
        last = json.loads(events[-1])
        assert last["error"]["code"] == "server_shutting_down", last
        assert last["error"]["message"]
        # More text arrived during the grace, then the error ended the stream after it.
        assert len(events) > 2
        assert 0.9 < ended < 3.0, f"the stream ended {ended:.2f} s after SIGTERM with --shutdown-grace 1"
        s.proc.wait(timeout=10)
        assert time.monotonic() - start < 4.0
        assert s.proc.returncode == 0, s.output()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
        s.log.close()


def test_a_stream_shorter_than_the_grace_completes_and_then_the_server_exits():
    import json

    s = stopped_server("--shutdown-grace", "30")
    try:
        client, r, lines = start_stream(s, 48)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        events = [line[6:] for line in lines if line.startswith("data: ")]
        r.close()
        client.close()
        assert events[-1] == "[DONE]", events[-3:]
        finish = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
        assert finish[-1] == "length"
        # The server exits once the stream is done, not after the 30 s grace.
        s.proc.wait(timeout=20)
        assert time.monotonic() - start < 10.0
        assert s.proc.returncode == 0, s.output()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
        s.log.close()
