import json

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from loadtest.chart import ttfa_svg
from loadtest.models import LoadTestRun


@admin.register(LoadTestRun)
class LoadTestRunAdmin(admin.ModelAdmin):
    list_display = ("created_at", "target", "devices", "turns_completed", "error_rate", "ttfa_p50", "ttfa_p95",
                    "ttfa_p99", "underruns_per_minute", "generator_behind", "passed")
    list_filter = ("passed", "generator_behind")
    search_fields = ("target",)
    readonly_fields = ("latency_chart", "summary", "created_at", "target", "devices", "turns_completed", "errors",
                       "error_rate", "ttfa_p50", "ttfa_p95", "ttfa_p99", "underruns_per_minute", "generator_behind",
                       "passed", "settings_json", "figures_json")
    exclude = ("settings", "figures", "report")

    def has_add_permission(self, request):
        return False  # runs come from manage.py loadtest

    @admin.display(description="TTFA per turn")
    def latency_chart(self, obj):
        targets = (obj.report or {}).get("targets") or {}
        return mark_safe(ttfa_svg((obj.report or {}).get("turns", []), obj.ttfa_p95, targets.get("ttfa_p95_ms")))  # noqa: S308 - built from numbers

    @admin.display(description="summary")
    def summary(self, obj):
        from loadtest.report import table

        try:
            return format_html("<pre>{}</pre>", table(obj.report))
        except (KeyError, TypeError):
            return "-"

    @admin.display(description="settings")
    def settings_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.settings, indent=2))

    @admin.display(description="figures")
    def figures_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.figures, indent=2))
