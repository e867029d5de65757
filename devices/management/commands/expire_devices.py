"""Delete devices that never activated or never connected and have not been seen for a while."""
from django.core.management.base import BaseCommand

from devices import records


class Command(BaseCommand):
    help = ("Delete devices that never activated or never opened a session and were not seen for "
            "XIAOZHI_DEVICE_EXPIRY_SECONDS (run hourly by Celery beat or the in-process scheduler).")

    def handle(self, *args, **options):
        self.stdout.write(f"{records.expire_devices()} device(s) expired")
