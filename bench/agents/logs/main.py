"""A log-writing benchmark agent: a single-threaded asyncio HTTP/1.1
keep-alive server (standard library only) whose stdout is the thing measured.

- POST /burst {"run": R, "count": N, "bytes": B} writes N numbered lines
  "INFO burst R <i> N <padding>" (i = 0 … N-1, each line B bytes with its
  newline) to stdout as fast as it can, in large writes, then answers
  {"first_ns": …, "last_ns": …}: CLOCK_REALTIME just before the first write
  and just after the last one.
- POST /tick {"k": K} writes one line "INFO tick K <ns>", ns being
  CLOCK_REALTIME just before the write, and answers {"ns": ns}.
- GET /health answers 200.

Writes go straight to file descriptor 1 (os.write, no Python buffering), so
a line is in the pipe when the answer goes out. The loop blocks while a
burst is written: a burst is the only thing the agent does meanwhile."""
import asyncio
import json
import os
import time

HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          b"Content-Length: 15\r\n\r\n{\"status\":\"ok\"}")
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
             b"Content-Length: 2\r\n\r\n{}")
# Lines per write() of a burst.
CHUNK = 1000


def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def burst(run, count, size):
    prefix = f"INFO burst {run} "
    first = time.time_ns()
    for start in range(0, count, CHUNK):
        lines = []
        for i in range(start, min(start + CHUNK, count)):
            head = f"{prefix}{i} {count} "
            lines.append(head + "x" * max(0, size - len(head) - 1) + "\n")
        write_all("".join(lines).encode())
    return {"first_ns": first, "last_ns": time.time_ns()}


def tick(k):
    ns = time.time_ns()
    write_all(f"INFO tick {k} {ns}\n".encode())
    return {"ns": ns}


def answer(body):
    data = json.dumps(body).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ")[:2]
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            if method == b"POST" and path == b"/tick":
                writer.write(answer(tick(json.loads(body)["k"])))
            elif method == b"POST" and path == b"/burst":
                req = json.loads(body)
                writer.write(answer(burst(req["run"], req["count"], req.get("bytes", 100))))
            elif path == b"/health":
                writer.write(HEALTH)
            else:
                writer.write(NOT_FOUND)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError):
        pass
    finally:
        writer.close()


async def main():
    port = int(os.environ.get("PORT", "8080"))
    server = await asyncio.start_server(serve, "0.0.0.0", port, backlog=1024)
    write_all(f"INFO listening on {port}\n".encode())
    async with server:
        await server.serve_forever()


asyncio.run(main())
