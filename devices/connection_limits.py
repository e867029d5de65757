"""How many device sockets this process holds, against performance.yaml's ``server.max_connections``,
and how many each client address holds, against ``server.max_connections_per_address``.

A socket holds its slot from its arrival to its disconnect, not only once its session runs, so a
burst of handshakes cannot overshoot while each waits for its database registration. Each Daphne
process counts its own sockets: the limit is per process, as the CPU and memory it protects are.
"""
from __future__ import annotations

import collections
import threading

class ConnectionSlots:
    """A counter with a ceiling; a lock because tests may run consumers on several event loops.

    A device that already holds a slot here may open another socket even when the process is full:
    its new socket replaces the old (close 4409, which frees that slot), and a device reconnecting
    after a network drop must not be locked out by its own stale socket."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_device: collections.Counter = collections.Counter()
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def try_acquire(self, limit: int, device_id: str) -> bool:
        with self._lock:
            if self._held >= limit and not self._by_device[device_id]:
                return False
            self._by_device[device_id] += 1
            self._held += 1
            return True

    def release(self, device_id: str) -> None:
        with self._lock:
            if self._by_device[device_id] <= 0:
                return
            self._held -= 1
            self._by_device[device_id] -= 1
            if not self._by_device[device_id]:
                del self._by_device[device_id]


class AddressSlots:
    """One ConnectionSlots per client address, dropped when its last socket leaves (bounded by the
    sockets held). The same device-replaces-itself rule: a device reconnecting from its address is
    let in over the cap, its old socket is about to go."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_address: dict[str, ConnectionSlots] = {}

    def held(self, address: str) -> int:
        with self._lock:
            pool = self._by_address.get(address)
            return pool.held if pool else 0

    def try_acquire(self, limit: int, address: str, device_id: str) -> bool:
        with self._lock:
            pool = self._by_address.setdefault(address, ConnectionSlots())
            acquired = pool.try_acquire(limit, device_id)
            if not pool.held:
                del self._by_address[address]
            return acquired

    def release(self, address: str, device_id: str) -> None:
        with self._lock:
            pool = self._by_address.get(address)
            if pool is None:
                return
            pool.release(device_id)
            if not pool.held:
                del self._by_address[address]


slots = ConnectionSlots()
address_slots = AddressSlots()
