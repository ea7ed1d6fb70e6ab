"""An HTTP receiver on loopback for webhooks, in the test's (or the harness's) own process: standard library only."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = (
    'WebhookReceiver',
)


class WebhookReceiver:
    """
    Records the JSON body and the arrival time of each POST; answers ``status`` (changeable) after ``delay`` seconds
    (read when the request arrives). ``arrivals`` counts requests as they arrive, before the delay.
    """

    def __init__(self):
        self.bodies = []
        self.times = []
        self.arrivals = 0
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                with owner._lock:
                    delay, owner.arrivals = owner.delay, owner.arrivals + 1
                time.sleep(delay)
                with owner._lock:
                    owner.bodies.append(json.loads(body or b'{}'))
                    owner.times.append(time.time())
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f'http://127.0.0.1:{self.server.server_address[1]}/hook'

    def names(self):
        """The ``data.name`` of every request received, sorted (one entry per delivery)."""
        with self._lock:
            return sorted(str(body.get('data', {}).get('name')) for body in self.bodies)

    def clear(self):
        with self._lock:
            self.bodies.clear()
            self.times.clear()
            self.arrivals = 0

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
