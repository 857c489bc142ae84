"""Text layer: pretrained encoders loaded offline, text rendering, embedding caches."""

from shoprank.text.cache import EmbeddingCache
from shoprank.text.encoder import EncoderConfig, TextEncoder, resolve_model_path
from shoprank.text.render import render_items, render_query

__all__ = ["EmbeddingCache", "EncoderConfig", "TextEncoder", "render_items", "render_query", "resolve_model_path"]
