"""Consultation service: the front door for upstream systems, and the keeper of each prescription's status."""
