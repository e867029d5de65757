"""The common tools of the xiaozhi firmware as its ``tools/list`` describes them (main/mcp_server.cc,
paraphrased where long), for scripted devices: the tests, the benchmark and the simulated device
answer MCP with these, so the model sees what a real device would send."""

DEVICE_STATUS = {
    "name": "self.get_device_status",
    "description": ("Provides the real-time information of the device, including the current status of the audio "
                    "speaker, screen, battery, network, etc.\nUse this tool for: \n1. Answering questions about "
                    "current condition (e.g. what is the current volume of the audio speaker?)\n2. As the first step "
                    "to control the device (e.g. turn up / down the volume of the audio speaker, etc.)"),
    "inputSchema": {"type": "object", "properties": {}},
}
SET_VOLUME = {
    "name": "self.audio_speaker.set_volume",
    "description": ("Set the volume of the audio speaker. If the current volume is unknown, you must call "
                    "`self.get_device_status` tool first and then call this tool."),
    "inputSchema": {"type": "object", "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
                    "required": ["volume"]},
}
SET_BRIGHTNESS = {
    "name": "self.screen.set_brightness",
    "description": "Set the brightness of the screen.",
    "inputSchema": {"type": "object", "properties": {"brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
                    "required": ["brightness"]},
}
FIRMWARE_TOOLS = (DEVICE_STATUS, SET_VOLUME, SET_BRIGHTNESS)
