from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from devices import device_commands, memory_records, rate_limits, records
from devices.client_address import client_address
from devices.device_commands import DeviceNotConnected
from devices.forms import AgentConfigForm, AlertForm, BindActivationCodeForm, DeviceForm, ToolCallForm
from devices.models import AgentConfig, Device, DeviceSession, Turn, VisionQuery


def tool_calls_html(calls) -> str:
    """A turn's tool calls as a small table (name, arguments, result, duration); "-" for none."""
    import json

    from django.utils.html import format_html, format_html_join

    calls = [c for c in calls or () if isinstance(c, dict)]
    if not calls:
        return "-"
    rows = format_html_join("", "<tr><td>{}</td><td><code>{}</code></td><td>{}{}</td><td>{}</td></tr>", (
        (c.get("name", "?"), json.dumps(c.get("arguments", {}), ensure_ascii=False)[:300],
         "error: " if c.get("is_error") and not str(c.get("result", "")).startswith("error") else "",
         str(c.get("result", ""))[:300],
         "-" if c.get("seconds") is None else f"{float(c['seconds']) * 1000:.0f} ms")
        for c in calls))
    return format_html('<table class="tool-calls"><thead><tr><th>Tool</th><th>Arguments</th><th>Result</th>'
                       "<th>Duration</th></tr></thead><tbody>{}</tbody></table>", rows)


@admin.register(AgentConfig)
class AgentConfigAdmin(admin.ModelAdmin):
    form = AgentConfigForm
    list_display = (
        "name", "is_default", "voice", "asr_provider", "llm_provider", "tts_provider", "llm_model", "vllm_provider",
        "memory_enabled",
        "updated_at",
    )
    list_filter = ("is_default", "memory_enabled")
    search_fields = ("name", "system_prompt")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceForm
    list_display = ("device_id", "board", "firmware_version", "activated", "bound_client_id", "online", "last_seen",
                    "agent", "commands")
    list_filter = ("online", "activated", "agent")
    search_fields = ("device_id", "client_id", "board")
    list_select_related = ("agent",)
    readonly_fields = ("activation_code", "activation_code_expires_at", "bound_client_id", "bound_at", "online",
                       "last_seen", "created_at", "memory_updated_at", "recent_turns", "recent_photo_questions")
    actions = ["mark_activated", "reset_binding", "send_alert", "reboot", "clear_memory"]

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
                                "<td>{}</td><td>{}</td><td>{}</td></tr>", (
            (f"{t.created_at:%Y-%m-%d %H:%M:%S}", t.user_text[:60], ms(t.asr_done_ms), ms(t.llm_first_token_ms),
             ms(t.first_sentence_ms), ms(t.tts_first_audio_ms), ms(t.first_audio_sent_ms),
             tool_calls_html(t.tool_calls), t.error or "")
            for t in turns))
        return format_html('<table class="recent-turns"><thead><tr><th>When</th><th>User said</th><th>ASR</th>'
                           "<th>LLM 1st token</th><th>1st sentence</th><th>TTS 1st audio</th><th>1st audio sent</th>"
                           "<th>Tool calls</th><th>Error</th></tr></thead><tbody>{}</tbody></table>", rows)

    @admin.display(description="Recent photo questions")
    def recent_photo_questions(self, obj):
        """Read-only: what the camera tool asked and was told, with the time it took."""
        if obj is None or obj.pk is None:
            return "-"
        from django.utils.html import format_html, format_html_join

        rows = obj.vision_queries.order_by("-asked_at")[:10]
        if not rows:
            return "No photo questions yet."
        cells = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (f"{q.asked_at:%Y-%m-%d %H:%M:%S}", q.question[:80], q.answer[:120],
             "-" if q.seconds is None else f"{q.seconds:.1f} s", f"{q.image_bytes} B", q.error or "")
            for q in rows))
        return format_html('<table class="recent-photo-questions"><thead><tr><th>When</th><th>Question</th>'
                           "<th>Answer</th><th>Time</th><th>Photo</th><th>Error</th></tr></thead><tbody>{}</tbody>"
                           "</table>", cells)

    @admin.action(description="Mark selected devices activated", permissions=["change"])
    def mark_activated(self, request, queryset):
        """Binds each to the Client-Id it last polled with (if any; else to the next one seen)."""
        count = queryset.update(activated=True, activation_code="", activation_code_expires_at=None)
        queryset.filter(bound_client_id="").exclude(client_id="").update(bound_client_id=F("client_id"),
                                                                           bound_at=timezone.now())
        self.message_user(request, f"{count} device(s) marked activated.", messages.SUCCESS)

    @admin.action(description="Reset binding of selected devices (e.g. after a board or firmware reset)",
                  permissions=["change"])
    def reset_binding(self, request, queryset):
        count = records.reset_binding(queryset)
        then = ("must be activated again with a new code" if settings.XIAOZHI_ACTIVATION_REQUIRED
                else "will be bound to the next client that polls or connects")
        self.message_user(request, f"{count} device(s) unbound; each {then}.", messages.SUCCESS)

    @admin.display(description="Commands")
    def commands(self, obj):
        """Links to what can be sent to an online device's live connection."""
        if not obj.online:
            return "-"
        from django.utils.html import format_html

        return format_html('<a href="{}">Alert</a> · <a href="{}">Reboot</a> · <a href="{}">Call a tool</a>',
                           reverse("admin:devices_device_alert", args=[obj.pk]),
                           reverse("admin:devices_device_reboot", args=[obj.pk]),
                           reverse("admin:devices_device_tool", args=[obj.pk]))

    # -- commands to the live connection (devices/device_commands.py) --------------------------------------
    def _report(self, request, answers: dict) -> None:
        """Tell the admin what came of a command, device by device."""
        for device_id, reply in answers.items():
            if isinstance(reply, DeviceNotConnected):
                self.message_user(request, f"{device_id}: {reply}", messages.ERROR)
            else:
                self.message_user(request, f"{device_id}: {reply.text}", messages.SUCCESS if reply.ok else messages.ERROR)

    @admin.action(description="Send an alert to the selected devices", permissions=["change"])
    def send_alert(self, request, queryset):
        """First a form (status, message, emotion), then the alert to each selected device."""
        form = AlertForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            data = form.cleaned_data
            self._report(request, device_commands.send_alert([d.device_id for d in queryset], data["status"],
                                                             data["message"], data["emotion"]))
            return None
        return self._command_page(request, "Send an alert", form, devices=list(queryset), bulk_action="send_alert",
                                  submit="Send alert")

    @admin.action(description="Reboot the selected devices (online ones)", permissions=["change"])
    def reboot(self, request, queryset):
        self._report(request, device_commands.reboot([d.device_id for d in queryset]))

    def alert_view(self, request, object_id):
        device = self._device_for_command(request, object_id)
        form = AlertForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            self._report(request, device_commands.send_alert([device.device_id], data["status"], data["message"],
                                                             data["emotion"]))
            return redirect(reverse("admin:devices_device_change", args=[device.pk]))
        return self._command_page(request, f"Send an alert to {device.device_id}", form, devices=[device],
                                  submit="Send alert")

    def reboot_view(self, request, object_id):
        device = self._device_for_command(request, object_id)
        if request.method == "POST":
            self._report(request, device_commands.reboot([device.device_id]))
            return redirect(reverse("admin:devices_device_change", args=[device.pk]))
        return self._command_page(request, f"Reboot {device.device_id}", None, devices=[device], submit="Reboot",
                                  intro="The device restarts at once; a conversation in progress is cut off.")

    def tool_view(self, request, object_id):
        """The tools the live connection listed; call one with JSON arguments and see its answer."""
        device = self._device_for_command(request, object_id)
        result, problem, tools = None, "", []
        try:
            listed = device_commands.list_tools(device.device_id)
            tools = listed.tools if listed.ok else []
            problem = "" if listed.ok else listed.text
        except DeviceNotConnected as exc:
            problem = str(exc)
        form = ToolCallForm(request.POST if request.method == "POST" and tools else None, tools=tools,
                            initial={"arguments": "{}"})
        if tools and request.method == "POST" and form.is_valid():
            try:
                result = device_commands.call_tool(device.device_id, form.cleaned_data["tool"],
                                                   form.cleaned_data["arguments"])
            except DeviceNotConnected as exc:
                problem = str(exc)
        elif not problem and not tools:
            problem = "The device listed no tools on this connection."
        import json

        shown = [{**tool, "schema": json.dumps(tool.get("parameters") or {}, ensure_ascii=False)} for tool in tools]
        return self._command_page(request, f"Call a tool on {device.device_id}", form if tools else None,
                                  devices=[device], submit="Call", tools=shown, result=result, problem=problem)

    def _device_for_command(self, request, object_id) -> Device:
        if not self.has_change_permission(request):
            raise PermissionDenied
        return get_object_or_404(Device, pk=object_id)

    def _command_page(self, request, title, form, *, devices, submit, bulk_action="", intro="", tools=(),
                      result=None, problem=""):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts, "title": title, "form": form, "devices": devices, "submit": submit,
            "bulk_action": bulk_action, "intro": intro, "tools": tools, "result": result, "problem": problem,
        }
        return TemplateResponse(request, "admin/devices/device/command.html", context)

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
        view = self.admin_site.admin_view
        return [
            path("bind/", view(self.bind_view), name="devices_device_bind"),
            path("<path:object_id>/alert/", view(self.alert_view), name="devices_device_alert"),
            path("<path:object_id>/reboot/", view(self.reboot_view), name="devices_device_reboot"),
            path("<path:object_id>/tool/", view(self.tool_view), name="devices_device_tool"),
            *super().get_urls(),
        ]

    def bind_view(self, request):
        """Enter the code a device shows, the admin's half of the OTA activation handshake."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = BindActivationCodeForm(request.POST or None)
        address = client_address(request)
        if request.method == "POST":
            # Wrong codes are limited per address and in total, so 6 digits cannot be walked through.
            for limit, key in (("activation_code_failures_per_address", address), ("activation_code_failures_total", "all")):
                verdict = rate_limits.peek(limit, key)
                if not verdict.allowed:
                    return rate_limits.too_many_requests(
                        verdict, f"too many wrong activation codes; retry in {verdict.retry_after} s")
        if request.method == "POST" and form.is_valid():
            try:
                device = records.bind_activation_code(form.cleaned_data["code"], form.cleaned_data["agent"])
            except ValueError as exc:
                rate_limits.hit("activation_code_failures_per_address", address)
                rate_limits.hit("activation_code_failures_total", "all")
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
    list_display = ("created_at", "device", "user_text", "reply_text", "tools_called", "interrupted",
                    "first_audio_sent_ms", "error")
    list_filter = ("interrupted", "device")
    search_fields = ("user_text", "reply_text")
    list_select_related = ("device",)
    exclude = ("tool_calls",)  # shown as a table instead of raw JSON
    readonly_fields = ("tool_calls_table",)

    @admin.display(description="Tools")
    def tools_called(self, obj):
        return ", ".join(str(c.get("name", "?")) for c in obj.tool_calls or () if isinstance(c, dict)) or "-"

    @admin.display(description="Tool calls")
    def tool_calls_table(self, obj):
        return tool_calls_html(obj.tool_calls if obj else ())


@admin.register(VisionQuery)
class VisionQueryAdmin(ReadOnlyAdmin):
    list_display = ("asked_at", "device", "question", "answer", "seconds", "image_bytes", "turn", "error")
    list_filter = ("device",)
    search_fields = ("question", "answer", "device__device_id")
    list_select_related = ("device", "turn")
    exclude = ("image",)
    readonly_fields = ("photo",)

    @admin.display(description="Photo")
    def photo(self, obj):
        """The kept photo inline (XIAOZHI_VISION_KEEP_IMAGES), else a note that only its size was kept."""
        from base64 import b64encode

        from django.utils.html import format_html

        if not obj.image:
            return "Not kept (XIAOZHI_VISION_KEEP_IMAGES is off)."
        return format_html('<img src="data:{};base64,{}" style="max-width: 480px">', obj.image_type,
                           b64encode(bytes(obj.image)).decode("ascii"))
