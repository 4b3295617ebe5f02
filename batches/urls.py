from django.urls import path

from . import views

app_name = "batches"

urlpatterns = [
    path("batches/", views.page, name="page"),
    path("batches/list/", views.batch_list, name="list"),
    path("batches/<str:batch_id>/cancel/", views.cancel, name="cancel"),
    path("batches/<str:batch_id>/problems/", views.errors, name="problems"),
    path("batches/<str:batch_id>/<str:which>/", views.download, name="download"),
]
