"""Courier service: turns reserved prescriptions into deliveries, dispatches couriers, follows their reports."""
