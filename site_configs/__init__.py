"""Shipped site configs (TOML), one per site."""
