"""Helpers the tests share that the server never imports."""
