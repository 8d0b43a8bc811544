"""The embedded base model: a tiny Qwen2 built and warmed up locally."""
