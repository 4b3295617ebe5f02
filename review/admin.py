"""The audit log (read-only, undeletable from the admin, superusers included) and the users page
with each user's usage per model and their quota. Importing chat_admin and batches_admin
registers the admin of conversations, messages and batches: review sits above chat and batches
(docs/architecture.md, Layers), so they never import it."""
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, IntegerField, Max, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from chat.models import Conversation
from usage.models import UsageRecord, UserQuota

from . import batches_admin, chat_admin  # noqa: F401  (they register their ModelAdmins)
from .access import TextLookupGuard, deleted_objects
from .models import AuditRecord


@admin.register(AuditRecord)
class AuditRecordAdmin(TextLookupGuard, admin.ModelAdmin):
    list_display = ["created_at", "username", "action", "conversation", "owner_username", "with_text", "reason",
                    "detail"]
    list_filter = ["action", "with_text", "created_at", "username"]
    search_fields = ["username", "owner_username", "=conversation_id", "reason"]
    date_hierarchy = "created_at"
    fields = ["created_at", "user", "username", "action", "conversation", "owner_username", "with_text", "reason",
              "detail"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # absent, not just refused
        return actions

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation(self, obj):
        if obj.conversation_id is None:
            return "–"
        return format_html('<a href="{}">#{}</a>',
                           reverse("admin:chat_conversation_change", args=[obj.conversation_id]), obj.conversation_id)


class UserQuotaInline(admin.StackedInline):
    model = UserQuota
    can_delete = True
    max_num = 1
    extra = 0
    fields = list(UserQuota.FIELDS)
    verbose_name = verbose_name_plural = "quota (empty: the site default)"


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class ReviewUserAdmin(TextLookupGuard, UserAdmin):
    """Django's user admin plus usage (from the usage ledger) and the editable quota."""
    inlines = [UserQuotaInline]
    list_display = list(UserAdmin.list_display) + ["conversations", "tokens_used"]
    readonly_fields = ["usage_by_model"]

    def get_queryset(self, request):
        # Subqueries, not joins: two aggregated joins would multiply each other's rows.
        tokens = UsageRecord.objects.filter(user=OuterRef("pk")).order_by().values("user") \
            .annotate(total=Sum("total_tokens")).values("total")
        conversations = Conversation.objects.filter(owner=OuterRef("pk")).order_by().values("owner") \
            .annotate(n=Count("id")).values("n")
        return super().get_queryset(request).annotate(
            _tokens=Coalesce(Subquery(tokens, output_field=IntegerField()), 0),
            _conversations=Coalesce(Subquery(conversations, output_field=IntegerField()), 0))

    def get_deleted_objects(self, objs, request):
        # The confirmation lists every conversation of the user: without their titles.
        return deleted_objects(list(objs), request, self.admin_site)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return list(fieldsets) + [("Usage", {"fields": ["usage_by_model"]})]

    @admin.display(description="conversations", ordering="_conversations")
    def conversations(self, obj):
        return getattr(obj, "_conversations", None)

    @admin.display(description="tokens used", ordering="_tokens")
    def tokens_used(self, obj):
        return getattr(obj, "_tokens", None)

    @admin.display(description="usage per model")
    def usage_by_model(self, obj):
        rows = list(UsageRecord.objects.filter(user=obj).order_by().values("model")
                    .annotate(generations=Count("id"), prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
                              completion=Sum("completion_tokens"), total=Sum("total_tokens"),
                              last=Max("created_at")).order_by("model"))
        records = reverse("admin:usage_usagerecord_changelist") + f"?user__id__exact={obj.pk}"
        if not rows:
            return format_html('No generations recorded. <a href="{}">Usage records</a>', records)
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r["model"], r["generations"], r["prompt"], r["cached"], r["completion"], r["total"],
              r["last"].strftime("%Y-%m-%d %H:%M")) for r in rows))
        return format_html(
            '<table id="usage-by-model"><thead><tr><th>model</th><th>generations</th><th>prompt</th><th>cached</th>'
            '<th>completion</th><th>total tokens</th><th>last</th></tr></thead><tbody>{}</tbody></table>'
            '<p><a href="{}">Every usage record of this user</a> · quotas: below, or '
            '<a href="{}">the site default</a></p>',
            body, records, reverse("admin:usage_sitequota_changelist"))
