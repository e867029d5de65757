"""What the assistant can do besides talking: the tool model (``voice.tools.model``), the server's
own tools and a deployment's extra ones (``voice.tools.server``). Device tools come from the
device over MCP (``voice.mcp``); the turn offers both to the LLM through one ``Toolset``."""
