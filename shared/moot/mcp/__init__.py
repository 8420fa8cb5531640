"""`moot mcp`: moot's runs for MCP clients, on the official `mcp` SDK (the extra `mcp`).

`server` holds the tools and resources, `runs` follows a run with progress notifications,
`transcript` writes a run in Markdown, `command` is the `moot mcp` command.
"""
