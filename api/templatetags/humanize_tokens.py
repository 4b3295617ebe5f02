from django import template

register = template.Library()


@register.filter
def tokens(value):
    """12345 -> "12,345" (None stays None)."""
    if value is None or value == "":
        return value
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return value
