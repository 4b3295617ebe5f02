from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.new_chat, name="new"),
    path("conversations/", views.conversation_list, name="list"),
    path("c/<int:pk>/", views.conversation, name="conversation"),
    path("c/<int:pk>/thread/", views.thread, name="thread"),
    path("c/<int:pk>/item/", views.conversation_item, name="item"),
    path("c/<int:pk>/rename/", views.rename, name="rename"),
    path("c/<int:pk>/delete/", views.delete, name="delete"),
    path("c/<int:pk>/keep/", views.keep, name="keep"),
    path("c/<int:pk>/settings/", views.update_settings, name="settings"),
    path("c/<int:pk>/model/", views.choose_model, name="model"),
    path("c/<int:pk>/branch/", views.branch, name="branch"),
]
