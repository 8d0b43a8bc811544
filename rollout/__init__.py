"""Generation: Ray actors that each own a vLLM engine."""
