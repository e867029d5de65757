"""Django project package: settings, ASGI/URL routing and the Celery app."""
