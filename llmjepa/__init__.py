"""llmjepa: JEPA inside a multimodal language model, as experiments with numbers."""

__version__ = "0.1.0"
