"""Shipped Jinja2 queue templates, one per scheduler."""
