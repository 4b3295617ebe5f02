from django.urls import re_path

from . import api

urlpatterns = [
    re_path(r"^v1/files/?$", api.files, name="api_files"),
    re_path(r"^v1/files/(?P<file_id>[^/]+)/content/?$", api.file_content, name="api_file_content"),
    re_path(r"^v1/files/(?P<file_id>[^/]+)/?$", api.file_detail, name="api_file"),
    re_path(r"^v1/batches/?$", api.batches, name="api_batches"),
    re_path(r"^v1/batches/(?P<batch_id>[^/]+)/cancel/?$", api.batch_cancel, name="api_batch_cancel"),
    re_path(r"^v1/batches/(?P<batch_id>[^/]+)/?$", api.batch_detail, name="api_batch"),
]
