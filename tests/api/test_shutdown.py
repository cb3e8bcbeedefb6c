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
