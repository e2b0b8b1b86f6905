"""Persona-token shopping agent: vocabulary, two-stage fine-tuning, policies."""
