"""Batches in the admin: their state and counts. Line bodies and responses are users' message text:
they never show here; an admin reads them (with a reason, audited, when the site allows reading
text at all) through the line's conversation transcript in the review pages."""
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from .models import Batch, BatchFile, BatchLine

TEXT_FIELDS = ("body", "response")


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
    exclude = TEXT_FIELDS
    readonly_fields = [f.name for f in BatchLine._meta.fields if f.name not in TEXT_FIELDS] + ["transcript"]

    @admin.display(description="conversation")
    def transcript(self, obj):
        if not obj.conversation_id:
            return "-"
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">conversation #{}</a>', url, obj.conversation_id)


@admin.register(BatchFile)
class BatchFileAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "filename", "purpose", "bytes", "created_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "owner__username")
    exclude = ("data",)
    readonly_fields = ("id", "owner", "filename", "purpose", "bytes", "created_at")
