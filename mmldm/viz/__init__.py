"""Figures (``plots``) and notebook widgets; nothing here changes data or models."""
