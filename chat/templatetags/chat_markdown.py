from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    # render_markdown escapes raw HTML and sanitizes the result, so marking it safe is sound.
    return mark_safe(render_markdown(text or ""))  # noqa: S308
