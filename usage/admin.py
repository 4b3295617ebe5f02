"""Quotas (per user and the site default) and the usage ledger, with totals per user and model."""
from django.contrib import admin
from django.db.models import Count, Sum

from .models import SiteQuota, UsageRecord, UserQuota


@admin.register(SiteQuota)
class SiteQuotaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "requests_per_minute", "tokens_per_day", "tokens_per_month", "concurrent_generations"]

    def has_add_permission(self, request):
        return not SiteQuota.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "requests_per_minute", "tokens_per_day", "tokens_per_month", "concurrent_generations"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "source", "key_name", "model", "status", "prompt_tokens", "cached_tokens",
                    "completion_tokens", "total_tokens", "tool_calls"]
    list_filter = ["source", "model", "status", "created_at", ("user", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__username", "key_name", "model"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    readonly_fields = [f.name for f in UsageRecord._meta.fields]
    change_list_template = "admin/usage/usagerecord/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            queryset = response.context_data["cl"].queryset
        except (AttributeError, KeyError):
            return response  # a redirect or an error page
        response.context_data["totals"] = list(
            queryset.order_by().values("user__username", "model")
            .annotate(generations=Count("id"), prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
                      completion=Sum("completion_tokens"), total=Sum("total_tokens"),
                      tool_calls=Sum("tool_calls"))
            .order_by("user__username", "model"))
        return response
