from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from chat.models import Message
from chat.rendering import citation_href, citation_label, render_answer, render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    # render_markdown escapes raw HTML and sanitizes the result, so marking it safe is sound.
    return mark_safe(render_markdown(text or ""))


@register.filter(name="answer_html")
def answer_html_filter(message: Message) -> SafeString:
    """An assistant message's answer, its [n] markers linked to the passages it cites."""
    # render_answer builds the links as markdown tokens and sanitizes the result, so it is sound.
    return mark_safe(render_answer(message.content or "", message.citations or []))


@register.filter(name="citation_href")
def citation_href_filter(citation: dict[str, Any]) -> str:
    return citation_href(citation)


@register.filter(name="citation_label")
def citation_label_filter(citation: dict[str, Any]) -> str:
    return citation_label(citation)
