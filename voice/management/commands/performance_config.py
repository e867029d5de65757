"""``manage.py performance_config``: the performance configuration this machine would run with.

Prints the merged YAML (valid as a ``data/.performance.yaml``) with, on each value, the layer it
came from, so an administrator sizing a box sees what the profile chose and what an override changed.
"""
from __future__ import annotations

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from voice.conf import NO_PROFILE, PerformanceConfigError, performance_config


def scalar(value) -> str:
    return yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]


def render(config) -> str:
    m = config.machine
    lines = [
        "# effective performance configuration",
        f"# profile: {config.profile or NO_PROFILE} (machine: {m.cpus} CPUs, {m.memory_gb} GB; "
        f"profiles: {', '.join(config.profiles) or 'none'}; force one with XIAOZHI_PERFORMANCE_PROFILE)",
        f"# layers, later wins: {settings.XIAOZHI_PERFORMANCE_FILE} < profile < "
        f"{settings.XIAOZHI_PERFORMANCE_OVERRIDES} < XIAOZHI_PERF__* environment variables",
    ]

    def walk(node: dict, path: str, depth: int) -> None:
        for key, value in node.items():
            dotted = f"{path}{key}"
            if isinstance(value, dict):
                lines.append(f"{'  ' * depth}{key}:")
                walk(value, dotted + ".", depth + 1)
            else:
                lines.append(f"{'  ' * depth}{key}: {scalar(value)}  # {config.sources[dotted]}")

    walk(config.values, "", 0)
    for name, limits in config.services.items():
        if not limits.enable_queue:
            lines.append(f"# services.{name}: enable_queue is false, so no call waits (queue_size is not used)")
    return "\n".join(lines) + "\n"


class Command(BaseCommand):
    help = "Print the effective performance configuration (profile, merged values) and where each value came from."

    def handle(self, *args, **options):
        performance_config.cache_clear()
        try:
            config = performance_config()
        except PerformanceConfigError as exc:
            raise CommandError(f"performance configuration: {exc}") from None
        self.stdout.write(render(config), ending="")
