"""Incidents: runs of one entity's consecutive alerts (see :mod:`.grouping` and :mod:`.service`)."""
