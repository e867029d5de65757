from django.urls import re_path

from devices import ota, vision_views

# Both spellings, with and without the trailing slash: firmware builds differ and a redirect
# would turn their POST into a GET.
urlpatterns = [
    re_path(r"^ota/?$", ota.ota, name="ota"),
    re_path(r"^ota/activate/?$", ota.activate, name="ota-activate"),
    re_path(r"^vision/?$", vision_views.upload, name="vision"),
]
