"""Persona-token shopping agent: vocabulary, two-stage fine-tuning, policies and their backend registry."""
