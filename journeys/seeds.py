"""Placeholder replaced below."""

SEEDERS: list[object] = []
