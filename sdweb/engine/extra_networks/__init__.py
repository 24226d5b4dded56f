"""Extra networks: LoRA (``<lora:name:weight>`` tags) and textual-inversion embeddings (words)."""
