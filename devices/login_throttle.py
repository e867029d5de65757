"""Slow down password guessing on the admin login.

Each failed login (Django's ``user_login_failed`` signal, whichever form sent it) counts against
the client address under ``rate_limits.admin_login_failures_per_address``; once over, every login
POST from that address is answered 429 with Retry-After until the window ends, before any password
is checked, so a correct guess in that time is not even tried.
"""
from __future__ import annotations

import logging

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
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.path == reverse("admin:login"):
            verdict = rate_limits.peek(LIMIT, client_address(request))
            if not verdict.allowed:
                return rate_limits.too_many_requests(
                    verdict, f"too many failed logins from this address; retry in {verdict.retry_after} s")
        return self.get_response(request)
