from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from devices import memory_records, records
from devices.forms import AgentConfigForm, BindActivationCodeForm, DeviceForm
from devices.models import AgentConfig, Device, DeviceSession, Turn


@admin.register(AgentConfig)
class AgentConfigAdmin(admin.ModelAdmin):
    form = AgentConfigForm
    list_display = (
        "name", "is_default", "voice", "asr_provider", "llm_provider", "tts_provider", "llm_model", "memory_enabled",
        "updated_at",
    )
    list_filter = ("is_default", "memory_enabled")
    search_fields = ("name", "system_prompt")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceForm
    list_display = ("device_id", "board", "firmware_version", "activated", "online", "last_seen", "agent")
    list_filter = ("online", "activated", "agent")
    search_fields = ("device_id", "client_id", "board")
    list_select_related = ("agent",)
    readonly_fields = ("activation_code", "activation_code_expires_at", "online", "last_seen", "created_at",
                       "memory_updated_at", "recent_turns")
    actions = ["mark_activated", "clear_memory"]

    @admin.display(description="Recent turns (ms after end of speech)")
    def recent_turns(self, obj):
        """Read-only: the last turns with their stage timings, so slowness shows on the device page."""
        if obj is None or obj.pk is None:
            return "-"
        from django.utils.html import format_html, format_html_join

        turns = obj.turns.order_by("-created_at")[:20]
        if not turns:
            return "No turns yet."
        ms = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                                "<td>{}</td><td>{}</td></tr>", (
            (f"{t.created_at:%Y-%m-%d %H:%M:%S}", t.user_text[:60], ms(t.asr_done_ms), ms(t.llm_first_token_ms),
             ms(t.first_sentence_ms), ms(t.tts_first_audio_ms), ms(t.first_audio_sent_ms), t.error or "")
            for t in turns))
        return format_html('<table class="recent-turns"><thead><tr><th>When</th><th>User said</th><th>ASR</th>'
                           "<th>LLM 1st token</th><th>1st sentence</th><th>TTS 1st audio</th><th>1st audio sent</th>"
                           "<th>Error</th></tr></thead><tbody>{}</tbody></table>", rows)

    @admin.action(description="Mark selected devices activated", permissions=["change"])
    def mark_activated(self, request, queryset):
        count = queryset.update(activated=True, activation_code="", activation_code_expires_at=None)
        self.message_user(request, f"{count} device(s) marked activated.", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        if "memory" in form.changed_data:
            from django.utils import timezone

            obj.memory_updated_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description="Clear the memory of selected devices", permissions=["change"])
    def clear_memory(self, request, queryset):
        count = memory_records.clear_memory(queryset)
        self.message_user(request, f"Memory of {count} device(s) cleared.", messages.SUCCESS)

    def get_urls(self):
        bind = path("bind/", self.admin_site.admin_view(self.bind_view), name="devices_device_bind")
        return [bind, *super().get_urls()]

    def bind_view(self, request):
        """Enter the code a device shows, the admin's half of the OTA activation handshake."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = BindActivationCodeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                device = records.bind_activation_code(form.cleaned_data["code"], form.cleaned_data["agent"])
            except ValueError as exc:
                form.add_error("code", str(exc))
            else:
                self.message_user(request, f"Device {device.device_id} activated", messages.SUCCESS)
                return redirect(reverse("admin:devices_device_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Bind activation code",
            "form": form,
        }
        return TemplateResponse(request, "admin/devices/device/bind.html", context)


class OpenSessionFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("closed", "Closed")]

    def queryset(self, request, queryset):
        if self.value() in ("open", "closed"):
            return queryset.filter(ended_at__isnull=self.value() == "open")
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Written by the server only; the admin looks and may delete."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(DeviceSession)
class DeviceSessionAdmin(ReadOnlyAdmin):
    list_display = ("device", "session_id", "started_at", "ended_at", "remote_addr", "close_reason")
    list_filter = (OpenSessionFilter,)
    search_fields = ("device__device_id", "session_id", "remote_addr")
    list_select_related = ("device",)


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "device", "user_text", "reply_text", "interrupted", "first_audio_sent_ms", "error")
    list_filter = ("interrupted", "device")
    search_fields = ("user_text", "reply_text")
    list_select_related = ("device",)
