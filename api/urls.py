from django.urls import path, re_path

from . import responses, views

app_name = "api"

urlpatterns = [
    re_path(r"^v1/models/?$", views.list_models, name="models"),
    re_path(r"^v1/models/(?P<name>.+)$", views.retrieve_model, name="model"),
    re_path(r"^v1/chat/completions/?$", views.chat_completions, name="chat_completions"),
    re_path(r"^v1/completions/?$", views.completions, name="completions"),
    re_path(r"^v1/responses/?$", responses.create, name="responses"),
    re_path(r"^v1/responses/(?P<rid>[^/]+)/?$", responses.response, name="response"),
    re_path(r"^v1/responses/(?P<rid>[^/]+)/input_items/?$", responses.input_items, name="response_input_items"),
    re_path(r"^v1/responses/(?P<rid>[^/]+)/cancel/?$", responses.cancel, name="response_cancel"),
    re_path(r"^v1(?:/(?P<rest>.*))?$", views.unknown),
]
