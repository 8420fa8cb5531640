"""`moot mcp [--transport stdio|http] [--host H] [--port P]`: serve moot's MCP server.

Over stdio (the default) an MCP client starts it as a subprocess and speaks on its stdin and
stdout; nothing else may be written there, so logs go to stderr. Over streamable HTTP it
listens on `http://HOST:PORT/mcp`, 127.0.0.1 by default: it acts with its own key, for whoever
reaches it. Parsing the options imports nothing of the SDK, so `moot --help` works without it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from moot.cli.common import CliError

DEFAULT_PORT = 8100


def add_command(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mcp",
        help="serve moot to MCP clients (stdio or streamable HTTP)",
        description="An MCP server, a client of the gateway like the other commands (MOOT_URL and"
        " MOOT_API_KEY, else the running local stack's): tools to run every mode or a saved"
        " configuration and wait for the answer with progress notifications, to get and list runs"
        " and saved configurations; run transcripts as resources moot://runs/{run_id}.",
    )
    p.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio for a client that starts the server (default), http for streamable HTTP",
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP: the address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP: the port (default {DEFAULT_PORT}); path /mcp"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until the client goes away (stdio) or the process is stopped (HTTP)."""
    try:
        import anyio

        from moot.mcp.server import MootServer
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("mcp"):
            raise
        raise CliError("`moot mcp` needs the MCP SDK: pip install 'moot[mcp]'") from exc
    server = MootServer()
    # A line per gateway request would drown the server's own log (stderr: stdout is the protocol's).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.transport == "stdio":
        anyio.run(server.run_stdio_async)
    else:
        anyio.run(lambda: server.run_streamable_http_async(host=args.host, port=args.port))
    return 0
