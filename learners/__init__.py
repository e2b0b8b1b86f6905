"""Everything that fits something: data pipeline, VQ-VAE buyer types, persona-token agent."""
