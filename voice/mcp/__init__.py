"""The server's side of MCP over the xiaozhi socket: one ``McpClient`` per device connection."""
from voice.mcp.client import CALL_ID_FIRST, INITIALIZE_ID, LIST_ID_FIRST, McpClient

__all__ = ["McpClient", "INITIALIZE_ID", "LIST_ID_FIRST", "CALL_ID_FIRST"]
