"""Open alerts for the admin index, so an administrator sees them on the first page."""
from django import template

register = template.Library()


@register.simple_tag
def open_alerts(limit: int = 10):
    from monitoring.models import Alert

    return list(Alert.objects.filter(status=Alert.OPEN).select_related("rule")[:limit])
