"""The per-image data path: decode, tile planning, the streaming runtime, assembly and encoding."""
