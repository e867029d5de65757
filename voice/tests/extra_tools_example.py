"""A deployment's extra tools module, as XIAOZHI_EXTRA_TOOLS names it (used by test_tools)."""
from voice.tools.model import ServerTool, Tool

TOOLS = [ServerTool(Tool("get_weather", "The weather in a city.",
                         {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                    lambda arguments, context: f"Sunny in {arguments.get('city', 'town')}, 21 degrees.")]
