"""The Redis channel layer and the Trio Redis client under it (``docs/redis.md``)."""

from __future__ import annotations

from .client import RedisReplyError
from .layer import RedisLayer

__all__ = ["RedisLayer", "RedisReplyError"]
