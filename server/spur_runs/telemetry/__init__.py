"""Logs and metrics: used by every layer that serves a call, so they sit
below all of them and import none."""
