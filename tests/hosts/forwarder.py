"""A TCP forwarder for the second-host tests: listens on the private link's root-side address and
relays each connection to a service that listens on loopback only (PostgreSQL, Redis).

    python forwarder.py LISTEN_ADDRESS TARGET_HOST:TARGET_PORT [...]

It binds one ephemeral port per target on LISTEN_ADDRESS (the test's own veth address, never
another one) and prints one JSON line {"TARGET_HOST:TARGET_PORT": port, ...} once it listens.
When the link goes down nothing here notices: the relayed connections simply stall, as they
would behind a real partition, and carry on when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


def relay_to(host: str, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    return relay


async def main(listen: str, targets: list[str]) -> None:
    ports: dict[str, int] = {}
    servers = []
    for target in targets:
        host, port = target.rsplit(":", 1)
        server = await asyncio.start_server(relay_to(host, int(port)), listen, 0)
        servers.append(server)
        ports[target] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
