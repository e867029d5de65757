from django.urls import path

from monitoring import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    path("api/performance/", views.performance, name="performance"),
    path("api/performance/websocket/", views.performance_websocket, name="performance-websocket"),
    path("api/performance/operations/<str:name>/", views.performance_operation, name="performance-operation"),
    path("api/performance/concurrency/", views.performance_concurrency, name="performance-concurrency"),
    path("api/performance/reset/", views.performance_reset, name="performance-reset"),
    path("monitoring/dashboard/data/", views.dashboard_data, name="monitoring-dashboard-data"),
]
