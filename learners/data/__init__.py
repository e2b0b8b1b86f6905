"""Clickstream data pipeline: adapters, validation and quarantine, sessions, buyer features."""
