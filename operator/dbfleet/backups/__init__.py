"""Backups, retention, point-in-time restore and restore drills, driving each engine's own tools."""
