from django.urls import path
from polls import views

urlpatterns = [
    path("count/", views.start_count),
    path("result/<str:task_id>/", views.result),
]
