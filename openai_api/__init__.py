"""The OpenAI-compatible API we expose (/v1/models, /v1/chat/completions) and its per-tenant keys."""
