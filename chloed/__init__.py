"""Chloe: a realtime web server for applications that speak only HTTP POST."""

__version__ = "0.1.0"
