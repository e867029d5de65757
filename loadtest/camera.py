"""A simulated device's camera: a real JPEG, and the upload the firmware's camera tool makes.

The firmware (``esp32_camera.cc``) answers the ``self.camera.take_photo`` tool by posting the photo
and the question, chunked, to the ``capabilities.vision`` URL of MCP ``initialize``; the body of a
200 answer is the tool's result, any other status the error "Failed to upload photo, status code N".
``upload_photo`` does the same, so a simulated device can answer the tool call exactly as a board.
"""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from fractions import Fraction

import httpx
import numpy as np

UPLOAD_CHUNK = 4096  # the firmware streams its multipart body in small chunks


class PhotoRefused(RuntimeError):
    """The server answered the upload with something other than 200: the tool call fails."""

    def __init__(self, status: int, text: str):
        super().__init__(f"Failed to upload photo, status code: {status}")
        self.status, self.text = status, text


def scene(width: int = 320, height: int = 240) -> np.ndarray:
    """A simple RGB picture: a red square on a blue sky above green grass."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height * 2 // 3] = (70, 130, 220)
    image[height * 2 // 3:] = (40, 160, 60)
    top, left, side = height // 4, width // 3, min(width, height) // 3
    image[top: top + side, left: left + side] = (220, 30, 30)
    return image


def photo_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A real baseline JPEG of ``scene()``, encoded by libavcodec's MJPEG encoder (PyAV, already
    installed with faster-whisper)."""
    import av

    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(scene(width, height), format="rgb24").reformat(format="yuvj420p")
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


def multipart(question: str, jpeg: bytes, boundary: str) -> bytes:
    """The body the firmware builds: a ``question`` field, then ``file`` named camera.jpg."""
    return b"".join([
        f'--{boundary}\r\nContent-Disposition: form-data; name="question"\r\n\r\n{question}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="camera.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode(),
        jpeg,
        f"\r\n--{boundary}--\r\n".encode(),
    ])


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), UPLOAD_CHUNK):
        yield body[start: start + UPLOAD_CHUNK]


async def upload_photo(url: str, token: str, device_id: str, client_id: str, question: str, jpeg: bytes,
                       *, timeout: float = 60.0, client: httpx.AsyncClient | None = None) -> str:
    """Post the photo as the camera tool does (chunked) and return the answer text; raises
    ``PhotoRefused`` for any status but 200, as the tool call then fails on the device."""
    boundary = f"----ESP32_CAMERA_BOUNDARY_{secrets.token_hex(8)}"
    headers = {"Device-Id": device_id, "Client-Id": client_id, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:  # (an empty token: a device that was offered none)
        headers["Authorization"] = f"Bearer {token}"
    body = multipart(question, jpeg, boundary)
    own = client is None
    client = client or httpx.AsyncClient(timeout=timeout)
    try:
        response = await client.post(url, headers=headers, content=_chunks(body), timeout=timeout)
    finally:
        if own:
            await client.aclose()
    if response.status_code != 200:
        raise PhotoRefused(response.status_code, response.text)
    return response.text.strip()


# -- the camera tool of a simulated device's MCP server ----------------------------------------------------
TAKE_PHOTO = {
    "name": "self.camera.take_photo",
    "description": ("Take a photo with the camera and ask a question about it. Use it when the user asks you to "
                    "look at something.\nArgs:\n  `question`: what to find out about the photo.\nReturns: the "
                    "answer about the photo."),
    "inputSchema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
}
NO_VISION = "Image explain URL or token is not set"  # what the firmware answers when initialize gave none


class Camera:
    """The camera as the firmware runs it: ``capabilities.vision`` from the server's ``initialize``
    is remembered, and ``tools/call`` of ``self.camera.take_photo`` uploads the photo there and
    answers with the server's text (or a JSON-RPC error, as the firmware's tool does on failure)."""

    def __init__(self, device_id: str, client_id: str, jpeg: bytes | None = None):
        self.device_id, self.client_id = device_id, client_id
        self.jpeg = jpeg if jpeg is not None else photo_jpeg()
        self.vision: dict | None = None
        self.answers: list[str] = []  # what each photo question was told

    def on_initialize(self, params) -> None:
        vision = ((params or {}).get("capabilities") or {}).get("vision") if isinstance(params, dict) else None
        ok = isinstance(vision, dict) and isinstance(vision.get("url"), str) and vision.get("url")
        self.vision = {"url": vision["url"], "token": str(vision.get("token") or "")} if ok else None

    async def answer(self, request: dict) -> dict:
        """The JSON-RPC reply to one ``tools/call`` of ``self.camera.take_photo``."""
        reply = {"jsonrpc": "2.0", "id": request.get("id")}
        question = ((request.get("params") or {}).get("arguments") or {}).get("question")
        if not isinstance(question, str) or not question:
            return {**reply, "error": {"message": "Missing valid argument: question"}}
        if self.vision is None:
            return {**reply, "error": {"message": NO_VISION}}
        try:
            text = await upload_photo(self.vision["url"], self.vision["token"], self.device_id, self.client_id,
                                      question, self.jpeg)
        except (PhotoRefused, httpx.HTTPError) as exc:
            return {**reply, "error": {"message": str(exc)}}
        self.answers.append(text)
        return {**reply, "result": {"content": [{"type": "text", "text": text}], "isError": False}}
