"""Slow down password guessing on the admin login.

Each failed login (Django's ``user_login_failed`` signal, whichever form sent it) counts against
the client address under ``rate_limits.admin_login_failures_per_address``; once over, every login
POST from that address is answered 429 with Retry-After until the window ends, before any password
is checked, so a correct guess in that time is not even tried.
"""
from __future__ import annotations

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.urls import reverse

from devices import rate_limits
from devices.client_address import client_address

log = logging.getLogger(__name__)
LIMIT = "admin_login_failures_per_address"


@receiver(user_login_failed)
def _count_failure(sender, credentials=None, request=None, **kwargs):
    if request is None:
        return
    address = client_address(request)
    if not rate_limits.hit(LIMIT, address).allowed:
        log.warning("admin login: %s is over %s (last user tried: %r)", address, LIMIT,
                    (credentials or {}).get("username", ""))


class AdminLoginThrottleMiddleware:
    """Sync and async capable, as Django's own middleware are: one sync-only middleware makes Django
    run every async view (the camera's vision upload) inside the single thread that the synchronous
    views and the sockets' database calls share, holding it for the whole request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _refusal(request):
        verdict = rate_limits.peek(LIMIT, client_address(request))
        if not verdict.allowed:
            return rate_limits.too_many_requests(
                verdict, f"too many failed logins from this address; retry in {verdict.retry_after} s")
        return None

    @staticmethod
    def _is_login(request) -> bool:
        return request.method == "POST" and request.path == reverse("admin:login")

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        refused = self._refusal(request) if self._is_login(request) else None
        return refused or self.get_response(request)

    async def _acall(self, request):
        refused = await sync_to_async(self._refusal, thread_sensitive=False)(request) if self._is_login(request) else None
        return refused or await self.get_response(request)
