"""Placeholder until its component lands."""


def init_app(app):
    return None
