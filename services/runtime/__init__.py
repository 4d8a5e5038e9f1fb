"""Plumbing shared by the four services: settings, logging, storage base, Kafka wiring, outbox relay."""
