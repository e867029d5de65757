"""Admin: alert rules edited in the browser, alert history, snapshots, and the dashboard page."""
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from monitoring.models import Alert, AlertRule, MetricSnapshot


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "metric", "comparison", "threshold", "for_seconds", "cooldown_seconds", "severity",
                    "enabled", "state", "last_value", "last_evaluated_at")
    list_editable = ("threshold", "enabled")
    list_filter = ("enabled", "severity", "state")
    readonly_fields = ("state", "pending_since", "last_value", "last_evaluated_at")
    fields = ("name", "metric", "comparison", "threshold", "for_seconds", "cooldown_seconds", "severity", "enabled",
              *readonly_fields)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("opened_at", "rule", "severity", "status", "value", "resolved_at", "resolved_value", "message")
    list_filter = ("status", "severity", "rule")
    date_hierarchy = "opened_at"
    list_select_related = ("rule",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(MetricSnapshot)
class MetricSnapshotAdmin(admin.ModelAdmin):
    list_display = ("created_at", "source", "processes", "cpu_percent", "memory_percent", "connected_devices",
                    "active_turns", "ttfa_p95_ms", "error_rate")
    date_hierarchy = "created_at"
    list_filter = ("source",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        dashboard = path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="monitoring_dashboard")
        return [dashboard, *super().get_urls()]

    def dashboard_view(self, request):
        """Charts of the stored snapshots; the page fetches its series from the data endpoint."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Monitoring dashboard",
            "open_alerts": Alert.objects.filter(status=Alert.OPEN).select_related("rule")[:20],
            "rules": AlertRule.objects.all(),
        }
        return TemplateResponse(request, "admin/monitoring/dashboard.html", context)
