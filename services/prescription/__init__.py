"""Prescription service: checks each prescription against the formulary and approves or rejects it."""
