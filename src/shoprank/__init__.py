"""shoprank: e-commerce search and recommendation on pretrained language models."""

__version__ = "0.1.0"
