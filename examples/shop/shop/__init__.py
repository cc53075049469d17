"""A tiny shop: carts, prices and discounts (the example project kiln builds)."""

__version__ = "1.4.0"
