"""The device WebSocket: authenticate, register, then hand every frame to the voice session.

Kept thin on purpose: a Channels consumer handles one message at a time, so anything slow here
would delay every later audio frame and every ``abort`` on the socket. Binary frames are queued by
the session without awaiting; text frames are parsed and answered at once.

Past ``server.max_connections`` sockets in this process a new one is accepted and closed at once with
4503 "server full" (counted as ``connections_refused``), before anything is registered or started;
past ``server.max_connections_per_address`` from one client address, with 4429. A device bound to
another Client-Id is closed with 4403 before its session could replace the real device's.
The hello must arrive within ``server.connection_timeout`` of the socket's arrival.
"""
from __future__ import annotations

import logging
import time

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from devices import rate_limits, records
from devices.frame_dispatch import DirectFrameDispatch
from devices.connection_limits import address_slots, slots
from voice import live_stats
from voice.conf import performance_config
from voice.protocol import CloseCode, negotiate_binary_version
from voice.session import SessionConfig, VoiceSession

log = logging.getLogger(__name__)


def device_group(device_id: str) -> str:
    return "device." + device_id.replace(":", "")


class DeviceConsumer(DirectFrameDispatch, AsyncWebsocketConsumer):
    session: VoiceSession | None = None
    info: records.ConnectionInfo | None = None
    group: str | None = None
    closed = False
    counted = False  # whether this connection is in the connected_devices gauge
    holds_slot = False  # whether this connection counts against server.max_connections
    holds_address_slot = False  # whether it counts against server.max_connections_per_address

    async def connect(self):
        arrived = time.monotonic()
        identity = self.scope["device_identity"]
        await self.accept()
        if identity.error_code:
            log.warning("refused %s from %s: %s", identity.device_id, identity.remote_addr, identity.error_reason)
            await self.close(code=identity.error_code, reason=identity.error_reason)
            return
        limit = performance_config().server.max_connections
        if not slots.try_acquire(limit, identity.device_id):
            live_stats.incr("connections_refused")
            log.warning("refused %s from %s: server full (%d connections, server.max_connections)",
                        identity.device_id, identity.remote_addr, limit)
            await self.close(code=CloseCode.SERVER_FULL, reason="server full")
            return
        self.holds_slot = True
        if not rate_limits.exempt(identity.remote_addr):
            per_address = performance_config().server.max_connections_per_address
            if not address_slots.try_acquire(per_address, identity.remote_addr, identity.device_id):
                self._release_slot()
                live_stats.incr("connections_refused")
                log.warning("refused %s from %s: %d sockets from this address (server.max_connections_per_address)",
                            identity.device_id, identity.remote_addr, per_address)
                await self.close(code=CloseCode.RATE_LIMITED, reason="too many connections from this address")
                return
            self.holds_address_slot = True
        try:
            await self._start_session(identity, arrived)
        except records.BoundElsewhere:
            self._release_slot()
            log.warning("refused %s (client %s) from %s: the device is bound to another client (takeover attempt)",
                        identity.device_id, identity.client_id, identity.remote_addr)
            await self.close(code=CloseCode.FORBIDDEN, reason="device bound to another client")
        except BaseException:
            self._release_slot()
            raise

    async def _start_session(self, identity, arrived: float) -> None:
        version = negotiate_binary_version(identity.protocol_version_header, None)
        self.info = await database_sync_to_async(records.register_connection)(identity, version)
        # One live session per device: tell older connections of this device to close.
        self.group = device_group(identity.device_id)
        await self.channel_layer.group_send(self.group, {"type": "device.takeover", "channel": self.channel_name})
        await self.channel_layer.group_add(self.group, self.channel_name)
        agent = self.info.agent
        config = SessionConfig.from_settings(
            device_id=identity.device_id,
            session_id=self.info.session_id,
            protocol_version_header=identity.protocol_version_header,
            activated=self.info.activated,
            activation_code=self.info.activation_code,
            voice=agent.get("voice") or None,
            asr_provider=agent.get("asr_provider") or None,
            llm_provider=agent.get("llm_provider") or None,
            tts_provider=agent.get("tts_provider") or None,
            llm_model=agent.get("llm_model") or None,
        )
        if agent.get("system_prompt"):
            config.system_prompt = agent["system_prompt"]
        # server.connection_timeout counts from the socket's arrival: registration time is part of it.
        config.hello_timeout = max(0.1, config.hello_timeout - (time.monotonic() - arrived))
        self.session = VoiceSession(self, config, on_turn=self._record_turn)
        self.session.start()
        self.counted = True
        live_stats.gauge_add("connected_devices", 1)
        live_stats.incr("connections")

    async def receive(self, text_data=None, bytes_data=None):
        if self.session is None:
            return
        if bytes_data is not None:
            live_stats.incr("ws_messages_in")
            live_stats.incr("ws_bytes_in", len(bytes_data))
            self.session.handle_binary(bytes_data)
        elif text_data is not None:
            live_stats.incr("ws_messages_in")
            live_stats.incr("ws_bytes_in", len(text_data))
            await self.session.handle_text(text_data)

    def _release_slot(self) -> None:
        identity = self.scope["device_identity"]
        if self.holds_slot:
            self.holds_slot = False
            slots.release(identity.device_id)
        if self.holds_address_slot:
            self.holds_address_slot = False
            address_slots.release(identity.remote_addr, identity.device_id)

    async def disconnect(self, code):
        self.closed = True
        self._release_slot()
        if self.session:
            await self.session.close(f"socket closed ({code})")
            if self.counted:
                self.counted = False
                live_stats.gauge_add("connected_devices", -1)
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.info:
            await database_sync_to_async(records.close_connection)(self.info.session_pk, f"closed {code}")

    async def device_takeover(self, event):
        if event["channel"] != self.channel_name and not self.closed:
            if self.session:
                await self.session.close("replaced")
            await self.close(code=CloseCode.REPLACED, reason="replaced by a newer connection of this device")

    # -- the session's transport ---------------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        if not self.closed:
            live_stats.incr("ws_messages_out")
            live_stats.incr("ws_bytes_out", len(text))
            await self._send(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            live_stats.incr("ws_messages_out")
            live_stats.incr("ws_bytes_out", len(data))
            await self._send(bytes_data=data)

    async def _send(self, **frame) -> None:
        """Send, unless the client has already left: its disconnect is still queued behind the frame
        being handled (the fuzz test's resets), and will release everything; raising here instead
        would end the consumer before that disconnect and leak its slot, gauge and session row."""
        try:
            await self.send(**frame)
        except Disconnected:
            log.debug("%s left before a reply was sent", self.scope["device_identity"].device_id)

    async def close(self, code=None, reason=None):  # noqa: D401 - the session's transport close too
        if not self.closed:
            self.closed = True
            # int(): autobahn (Daphne) refuses any close code whose type is not exactly int, CloseCode too.
            await super().close(code=None if code is None else int(code), reason=reason)

    async def _record_turn(self, record) -> None:
        await database_sync_to_async(records.record_turn)(self.info.device_pk, self.info.session_pk, record.as_row())
