from django.contrib import admin

from .models import Batch, BatchFile, BatchLine


class LineInline(admin.TabularInline):
    model = BatchLine
    fields = ("index", "custom_id", "status", "attempts", "completion_tokens", "message_ids", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "status", "models_used", "total", "completed", "failed", "created_at",
                    "completed_at")
    list_filter = ("status", "models_used")
    search_fields = ("id", "owner__username")
    readonly_fields = [f.name for f in Batch._meta.fields]
    inlines = [LineInline]


@admin.register(BatchLine)
class BatchLineAdmin(admin.ModelAdmin):
    list_display = ("batch", "index", "custom_id", "status", "attempts", "completion_tokens")
    list_filter = ("status",)
    search_fields = ("batch__id", "custom_id")
    readonly_fields = [f.name for f in BatchLine._meta.fields]


@admin.register(BatchFile)
class BatchFileAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "filename", "purpose", "bytes", "created_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "owner__username")
    exclude = ("data",)
    readonly_fields = ("id", "owner", "filename", "purpose", "bytes", "created_at")
