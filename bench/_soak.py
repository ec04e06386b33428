"""The hostile-client soak of `bench/serve.py`: slow connections and malformed requests
against a server while a well-behaved client measures what it still gets.

``python bench/_soak.py PORT DURATION_S MODEL`` runs the attackers (one process, asyncio)
and prints one JSON line of what they saw: 500 slow connections from ten loopback
addresses (127.0.0.2 .. 127.0.0.11, 50 each) that send a request head a few bytes at a
time and reconnect whenever the server hangs up, and a stream of malformed requests at
about 100 a second (bad HTTP, bad JSON, wrong datatype, sizes that lie, a 100 KB header, a
declared body over the limit, unknown models), each on its own connection.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

SLOW_CONNECTIONS = 500
SLOW_ADDRESSES = 10
MALFORMED_PER_S = 100.0


def _malformed(model: str) -> list[bytes]:
    def post(body: bytes, extra: str = "") -> bytes:
        return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    header = json.dumps({"inputs": [{"name": "data_0", "shape": [1, 3, 224, 224],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": 602112}}]}).encode()
    bytes_header = json.dumps({"inputs": [{"name": "data_0", "shape": [1000, 4],
                                           "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 16000}}]}).encode()
    return [
        b"GARBAGE / NOT-HTTP\r\n\r\n",
        post(b"{not json"),
        post(b'{"inputs": [{"name": "data_0", "shape": [1], "datatype": "FP99", "data": [1]}]}'),
        post(header + b"\x00" * 100,
             f"Inference-Header-Content-Length: {len(header)}\r\n"),  # sizes that lie
        post(bytes_header + b"\x00" * 16000,
             f"Inference-Header-Content-Length: {len(bytes_header)}\r\n"),  # BYTES to FP32
        (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
         "Content-Length: 999999999999\r\n\r\n").encode(),  # over the body limit
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /v2/models/no-such-model HTTP/1.1\r\nHost: x\r\n\r\n",
        post(b'{"inputs": "nope"}'),
    ]


async def _slow(port: int, source: str, end: float, out: dict) -> None:
    rng = random.Random(hash(source) ^ id(out))
    while time.monotonic() < end:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                          local_addr=(source, 0))
            out["slow_connects"] += 1
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < end:
                try:
                    data = await asyncio.wait_for(reader.read(200), 1.5 + rng.random() * 2)
                except asyncio.TimeoutError:
                    writer.write(b"X")  # one more byte of a header that never ends
                    continue
                if data.startswith(b"HTTP/1.1 "):
                    code = data[9:12].decode()
                    out["slow_answers"][code] = out["slow_answers"].get(code, 0) + 1
                break  # answered or closed: come back
        except OSError:
            out["slow_errors"] += 1
            await asyncio.sleep(0.5)
        finally:
            if writer is not None:
                writer.close()


async def _malformed_stream(port: int, model: str, end: float, out: dict) -> None:
    payloads = _malformed(model)
    i = 0
    while time.monotonic() < end:
        t0 = time.monotonic()
        payload = payloads[i % len(payloads)]
        i += 1
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.12", 0))
            writer.write(payload)
            head = await asyncio.wait_for(reader.read(200), 30)
            code = head[9:12].decode() if head.startswith(b"HTTP/1.1 ") else "closed"
            out["malformed_answers"][code] = out["malformed_answers"].get(code, 0) + 1
        except (OSError, asyncio.TimeoutError):
            out["malformed_answers"]["error"] = out["malformed_answers"].get("error", 0) + 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(max(0.0, 1.0 / MALFORMED_PER_S - (time.monotonic() - t0)))


async def attack(port: int, duration: float, model: str) -> dict:
    out = {"slow_connects": 0, "slow_errors": 0, "slow_answers": {}, "malformed_answers": {}}
    end = time.monotonic() + duration
    tasks = [_slow(port, f"127.0.0.{2 + i % SLOW_ADDRESSES}", end, out)
             for i in range(SLOW_CONNECTIONS)]
    tasks.append(_malformed_stream(port, model, end, out))
    await asyncio.gather(*tasks)
    return out


if __name__ == "__main__":
    port, duration, model = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    print(json.dumps(asyncio.run(attack(port, duration, model))), flush=True)
