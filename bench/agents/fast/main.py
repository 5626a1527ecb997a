"""A fast benchmark agent: a single-threaded asyncio HTTP/1.1 keep-alive
server (standard library only). POST /invoke answers {"output": <body>},
GET /health answers 200. It parses just enough HTTP for the benchmark's
clients (Content-Length bodies, no chunked requests)."""
import asyncio
import os

HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          b"Content-Length: 15\r\n\r\n{\"status\":\"ok\"}")
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
             b"Content-Length: 2\r\n\r\n{}")


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
            if method == b"POST" and path == b"/invoke":
                data = b'{"output":' + (body or b"null") + b"}"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
            elif path == b"/health":
                writer.write(HEALTH)
            else:
                writer.write(NOT_FOUND)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    port = int(os.environ.get("PORT", "8080"))
    server = await asyncio.start_server(serve, "0.0.0.0", port, backlog=1024)
    print(f"INFO listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
