"""Admin pages for reviewing sessions: conversations with their messages, and messages alone."""
from django.contrib import admin
from django.db.models import Count

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["id", "parent", "role", "status", "content", "completion_tokens", "tokens_per_second", "created_at"]
    readonly_fields = fields
    ordering = ["created_at", "id"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "model", "source", "api_key", "message_count", "updated_at"]
    list_filter = ["source", "model", "updated_at", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "owner__username", "messages__content"]
    list_select_related = ["owner"]
    date_hierarchy = "updated_at"
    raw_id_fields = ["owner", "current_leaf", "api_key"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [MessageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_messages=Count("messages"))

    @admin.display(description="messages", ordering="_messages")
    def message_count(self, obj):
        return obj._messages


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "completion_tokens", "tokens_per_second", "created_at"]
    list_filter = ["status", "role", "model_name", "created_at"]
    search_fields = ["content", "conversation__title", "conversation__owner__username"]
    list_select_related = ["conversation"]
    raw_id_fields = ["conversation", "parent"]
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request):
        return False
