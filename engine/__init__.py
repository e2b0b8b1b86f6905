"""SimPersona runtime on Ray and the user entry points (CLI, simulation, evaluation)."""
