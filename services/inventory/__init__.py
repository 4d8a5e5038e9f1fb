"""Inventory service: stock per warehouse and drug; reserves, releases and dispatches for prescriptions."""
