"""The minibar app's databases (states A-D of LEGACY.md), built from our own DDL, and its statements.

``schema``: DDL and builders for each state; ``formats``: model bytes as the
app serialised them; ``hotel``: the app's writes and reads as plain SQL.
"""
