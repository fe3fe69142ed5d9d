"""Fake upstreams for the benchmarks, run as their own processes so they do not share the load
generator's GIL.

    python -m bench.upstream fake DELAY          the strict test fake (tests/fake_openrouter.py),
                                                 every reply after DELAY seconds
    python -m bench.upstream ticks [N [PACE]]    an SSE upstream: N deltas (default 40) PACE seconds
                                                 apart (default 0.05), each the time it was sent

Each prints its base URL on the first line of stdout, then serves until killed.

`ticks` is one asyncio loop (a thousand streams at once cost it little CPU, so it does not steal the
2 cores from the app it feeds) and counts what it sent: `GET {base}/stats` answers
`{"requests": R, "deltas": D, "completed": C}`, so a benchmark can prove no delta was dropped.
"""

import asyncio
import json
import sys
import time


class Ticks:
    """A Responses API stream of `deltas` text deltas, `pace` seconds apart, each `time.time()` at the
    moment it was written (so a reader can tell how long it took to reach it)."""

    def __init__(self, deltas=40, pace=0.05):
        self.deltas, self.pace = deltas, pace
        self.stats = {"requests": 0, "deltas": 0, "completed": 0}

    async def serve(self, reader, writer):
        try:
            while await self.one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def one_request(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", 0))
        if length:
            await reader.readexactly(length)
        if method == "GET":  # /stats for the benchmark, /models for the app's model picker
            from tests.fake_openrouter import MODELS

            body = json.dumps(self.stats if path.endswith("/stats") else MODELS).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            return headers.get("connection", "").lower() != "close"
        self.stats["requests"] += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        item = {"type": "message", "id": "msg_tick", "role": "assistant", "status": "in_progress",
                "content": []}

        async def event(data):
            body = f"data: {json.dumps(data)}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(body), body))
            await writer.drain()

        await event({"type": "response.output_item.added", "output_index": 0, "item": item})
        text = ""
        for _ in range(self.deltas):
            await asyncio.sleep(self.pace)
            delta = f"{time.time():.6f} "
            text += delta
            await event({"type": "response.output_text.delta", "item_id": "msg_tick", "delta": delta})
            self.stats["deltas"] += 1
        done = dict(item, status="completed",
                    content=[{"type": "output_text", "text": text, "annotations": []}])
        await event({"type": "response.completed",
                     "response": {"status": "completed", "output": [done], "usage": None}})
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stats["completed"] += 1
        return headers.get("connection", "").lower() != "close"


async def serve_ticks(deltas, pace):
    ticks = Ticks(deltas, pace)
    server = await asyncio.start_server(ticks.serve, "127.0.0.1", 0, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1", flush=True)
    async with server:
        await server.serve_forever()


def main():
    mode = sys.argv[1]
    if mode == "fake":
        from tests.fake_openrouter import FakeOpenRouter, reply

        fake = FakeOpenRouter().start()
        fake.default = reply(delay=float(sys.argv[2]))
        print(fake.base_url, flush=True)
        while True:
            time.sleep(3600)
    else:
        deltas = int(sys.argv[2]) if len(sys.argv) > 2 else 40
        pace = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
        asyncio.run(serve_ticks(deltas, pace))


if __name__ == "__main__":
    main()
