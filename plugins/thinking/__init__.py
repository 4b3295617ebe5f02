"""SmolLM3 thinking extension (being built)."""
