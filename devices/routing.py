from django.urls import re_path

from devices.consumers import DeviceConsumer

# Firmware builds differ in the path they were configured with (/xiaozhi/v1/ is the convention);
# the path carries no meaning, so every path reaches the device consumer.
websocket_urlpatterns = [re_path(r"^.*$", DeviceConsumer.as_asgi())]
