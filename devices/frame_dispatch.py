"""Frames reach the consumer without a trip through the database thread.

Channels (4.2+) runs ``close_old_connections`` through ``sync_to_async`` before every message it
dispatches. Those calls share one thread with every consumer's database work, so for a device
socket that is one thread hop per audio frame (16 a second per talking device): under a flood of
frames (the fuzz test: 100,000 over a few hundred sockets) the hops queue up for seconds, a
consumer reaches its ``websocket.disconnect`` only after Daphne's ``application_close_timeout``,
and is killed before it can release its slot, gauge and session row. The consumer's own database
calls go through ``database_sync_to_async``, which closes old connections around each call in the
thread that uses them, so the per-frame hop buys nothing for ``websocket.receive``; connect,
disconnect and group messages keep Channels' behaviour.
"""
from __future__ import annotations


class DirectFrameDispatch:
    """Mixin for an ``AsyncWebsocketConsumer``: ``websocket.receive`` is handled without the hop."""

    async def dispatch(self, message):
        if message.get("type") == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)
