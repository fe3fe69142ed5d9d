"""Fake upstreams for the benchmarks, run as their own processes so they do not share the load
generator's GIL.

    python -m bench.upstream fake DELAY   the strict test fake (tests/fake_openrouter.py), every reply
                                          after DELAY seconds
    python -m bench.upstream ticks        an SSE upstream whose every delta is the time it was sent

Each prints its base URL on the first line of stdout, then serves until killed.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Ticks(BaseHTTPRequestHandler):
    """40 deltas 50 ms apart, each carrying `time.time()` at the moment it was written."""

    protocol_version = "HTTP/1.1"
    deltas, pace = 40, 0.05

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        item = {"type": "message", "id": "msg_tick", "role": "assistant", "status": "in_progress",
                "content": []}

        def event(data):
            body = f"data: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.flush()

        event({"type": "response.output_item.added", "output_index": 0, "item": item})
        text = ""
        for _ in range(self.deltas):
            time.sleep(self.pace)
            delta = f"{time.time():.6f} "
            text += delta
            event({"type": "response.output_text.delta", "item_id": "msg_tick", "delta": delta})
        done = dict(item, status="completed",
                    content=[{"type": "output_text", "text": text, "annotations": []}])
        event({"type": "response.completed",
               "response": {"status": "completed", "output": [done], "usage": None}})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    mode = sys.argv[1]
    if mode == "fake":
        from tests.fake_openrouter import FakeOpenRouter, reply

        fake = FakeOpenRouter().start()
        fake.default = reply(delay=float(sys.argv[2]))
        print(fake.base_url, flush=True)
    else:
        server = type("S", (ThreadingHTTPServer,), {"request_queue_size": 1024, "daemon_threads": True})
        httpd = server(("127.0.0.1", 0), Ticks)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        print(f"http://127.0.0.1:{httpd.server_address[1]}/api/v1", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
