from django.urls import path, re_path

from . import views

app_name = "api"

urlpatterns = [
    re_path(r"^v1/models/?$", views.list_models, name="models"),
    re_path(r"^v1/models/(?P<name>.+)$", views.retrieve_model, name="model"),
    re_path(r"^v1/chat/completions/?$", views.chat_completions, name="chat_completions"),
    re_path(r"^v1/completions/?$", views.completions, name="completions"),
    re_path(r"^v1(?:/(?P<rest>.*))?$", views.unknown),
]
