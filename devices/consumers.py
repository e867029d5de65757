"""The device WebSocket: authenticate, register, then hand every frame to the voice session.

Kept thin on purpose: a Channels consumer handles one message at a time, so anything slow here
would delay every later audio frame and every ``abort`` on the socket. Binary frames are queued by
the session without awaiting; text frames are parsed and answered at once.

Past ``server.max_connections`` sockets in this process a new one is accepted and closed at once with
4503 "server full" (counted as ``connections_refused``), before anything is registered or started;
past ``server.max_connections_per_address`` from one client address, with 4429. A device bound to
another Client-Id is closed with 4403 before its session could replace the real device's.
The hello must arrive within ``server.connection_timeout`` of the socket's arrival.

Everything a socket holds (its slots, its place in the ``connected_devices`` gauge, its session row)
is given back however the consumer ends: ``disconnect`` in the ordinary case, and the ``finally`` of
``__call__`` when it never runs (Daphne kills a consumer still busy 10 s after its client left, or
the consumer dies of an error). That release never awaits the database: the row's close goes to
devices/pending_writes.py, which retries until MySQL answers.

The channel layer (Redis) only carries the one-session-per-device takeover. While it is away the
device keeps talking: the takeover is skipped, failed receives are retried with backoff, and the
socket re-joins its device's group when Redis returns (devices/outages.py logs the outage once).
With the database away at the handshake a device is refused with 4502 (its binding and activation
cannot be checked, and the firmware retries): devices already talking keep talking, their turn
records wait in the pending-writes buffer.
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django import db

from devices import device_commands, rate_limits, records, session_owner
from devices.dispatch import dispatch_each
from devices.vision import vision_capability
from devices.client_address import scope_headers
from devices.connection_limits import address_slots, slots
from devices.device_commands import device_group
from devices.outages import channel_layer as layer_outage
from devices.outages import database as database_outage
from devices.pending_writes import SESSION_CLOSE, TURN, PendingWrite, pending
from voice import live_stats, memory
from voice.conf import performance_config
from voice.protocol import CloseCode, negotiate_binary_version
from voice.session import SessionConfig, VoiceSession

log = logging.getLogger(__name__)


LAYER_RETRY_FIRST, LAYER_RETRY_MAX = 0.2, 2.0  # seconds between channel-layer receive attempts while it fails


class DeviceConsumer(AsyncWebsocketConsumer):
    session: VoiceSession | None = None
    info: records.ConnectionInfo | None = None
    group: str | None = None
    closed = False
    counted = False  # whether this connection is in the connected_devices gauge
    holds_slot = False  # whether this connection counts against server.max_connections
    holds_address_slot = False  # whether it counts against server.max_connections_per_address
    memory: memory.SessionMemory | None = None  # when the agent keeps a memory of the device's user
    in_group = False  # whether this socket is in its device's group (re-joined after a channel-layer outage)
    row_closed = False  # whether the session row's close was written or handed to pending writes

    async def __call__(self, scope, receive, send):
        """Channels' consumer loop (``devices.dispatch``, cheaper per frame), with a channel-layer
        receive that survives an outage and a ``finally`` that releases what the socket holds even
        when ``disconnect`` never ran."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()  # local: no Redis call
            sources.append(self._layer_receive)
        ended = "consumer ended"
        try:
            await dispatch_each(sources, self.dispatch)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            ended = "consumer killed"
            raise
        except BaseException as exc:
            ended = f"consumer failed: {type(exc).__name__}"
            raise
        finally:
            await self._release_all(ended)

    async def dispatch(self, message):
        """Channels' dispatch without its per-message ``aclose_old_connections``: that is a hop through
        the one database thread for every audio frame (a socket flooding frames then took seconds to
        see its own disconnect). Our database calls go through ``database_sync_to_async``, which
        closes old connections around each call itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def _layer_receive(self):
        """The next channel-layer message; while the layer fails, retried with backoff (the device
        keeps talking meanwhile), and the device's group re-joined once it answers again."""
        delay = LAYER_RETRY_FIRST
        while True:
            try:
                if self.group and not self.in_group and not self.closed:
                    await self.channel_layer.group_add(self.group, self.channel_name)
                    self.in_group = True
                    layer_outage.ok()
                message = await self.channel_layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the layer is an outage to ride out
                # A restarted Redis may have lost the group (it keeps no data here): join it again.
                self.in_group = False
                layer_outage.failed(exc, "receive")
                await asyncio.sleep(delay)
                delay = min(LAYER_RETRY_MAX, delay * 2)
                continue
            layer_outage.ok()
            return message

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
        except (db.OperationalError, db.InterfaceError) as exc:
            self._release_slot()
            database_outage.failed(exc, "registering a connection")
            live_stats.incr("connections_refused")
            await self.close(code=CloseCode.STORAGE_UNAVAILABLE, reason="database unavailable, try again")
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
        # Bounded by the hello deadline: a frozen database must not hold the device without an answer.
        # (A registration finishing after the timeout leaves a row nobody holds: the sweep closes it.)
        budget = max(0.1, performance_config().server.connection_timeout - (time.monotonic() - arrived))
        try:
            self.info = await asyncio.wait_for(
                database_sync_to_async(records.register_connection)(identity, version), budget)
        except TimeoutError:
            raise db.OperationalError(f"registering the connection took over {budget:.1f} s") from None
        database_outage.ok()
        session_owner.hold(self.info.session_pk)
        # One live session per device: tell older connections of this device to close. Best effort:
        # with the channel layer away the device is served anyway, and joins its group when it returns.
        self.group = device_group(identity.device_id)
        try:
            await self.channel_layer.group_send(self.group, {"type": "device.takeover", "channel": self.channel_name})
            await self.channel_layer.group_add(self.group, self.channel_name)
            self.in_group = True
        except Exception as exc:  # noqa: BLE001
            layer_outage.failed(exc, "joining the device's group")
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
            wake_greeting=agent.get("wake_greeting") or "",
        )
        # From the agent already loaded (no database read here); the Host header is the fallback URL.
        config.vision = vision_capability(identity.device_id, identity.client_id, agent=agent,
                                          host=scope_headers(self.scope).get("host"), secure=self.scope.get("scheme") == "wss")
        if agent.get("system_prompt"):
            config.system_prompt = agent["system_prompt"]
        config.system_prompt = memory.prompt_with_memory(config.system_prompt, self.info.memory)
        if agent.get("memory_enabled"):
            self.memory = memory.SessionMemory.from_settings(
                device_pk=self.info.device_pk, device_id=identity.device_id, llm=agent["llm_provider"],
                llm_model=agent.get("llm_model") or None)
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
        await self._release_all(f"closed {code}", wait=True)

    async def _release_all(self, reason: str, wait: bool = False) -> None:
        """Give back everything the socket holds; idempotent. The slots, the gauge and the session
        row (handed to pending writes unless ``wait``) are released before the first await, so a
        second cancellation from Daphne cannot leave any of them held."""
        self.closed = True
        self._release_slot()
        if self.counted:
            self.counted = False
            live_stats.gauge_add("connected_devices", -1)
        close_row = None
        if self.info and not self.row_closed:
            self.row_closed = True
            session_owner.release(self.info.session_pk)
            close_row = PendingWrite(SESSION_CLOSE, partial(records.close_connection, self.info.session_pk, reason),
                                     f"session {self.info.session_id} of {self.info.device_pk}")
            if not wait:
                pending.submit(close_row)
        try:
            if self.session and not self.session.closed:
                await self.session.close(f"socket {reason}")  # cancels its tasks before its first await
            if self.memory:
                self.memory.close()  # idempotent; the update is queued (voice.memory), never awaited here
            if close_row is not None and wait:
                written, close_row = close_row, None
                await pending.write(written)  # a database error or a cancellation leaves it to the buffer
        finally:
            if close_row is not None and wait:  # cancelled before the row's turn came
                pending.submit(close_row)
        if self.group and self.in_group:
            self.in_group = False
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 - the group entry expires by itself
                layer_outage.failed(exc, "leaving the device's group")

    async def device_takeover(self, event):
        if event["channel"] != self.channel_name and not self.closed:
            if self.session:
                await self.session.close("replaced")
            await self.close(code=CloseCode.REPLACED, reason="replaced by a newer connection of this device")

    async def device_command(self, event):
        """A command from the admin (devices/device_commands.py): alert, reboot, list or call a tool."""
        if not self.closed:
            await device_commands.handle(self.session, event, self.channel_layer)

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
        """Written now, or kept and retried while the database is away (devices/pending_writes.py)."""
        if self.memory:
            self.memory.observe(record.user_text, record.reply_text)
        await pending.write(PendingWrite(
            TURN, partial(records.record_turn, self.info.device_pk, self.info.session_pk, record.as_row()),
            f"turn of session {self.info.session_id}"))

