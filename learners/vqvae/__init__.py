"""Behaviour-aware VQ-VAE buyer types: model, Ray Train fit, assignment, report."""
