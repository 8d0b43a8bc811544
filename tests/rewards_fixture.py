"""A user-style custom reward (reward.custom_fn) that guarantees a learning signal in a short test:
a near-random model almost never answers correctly, and all-zero rewards give zero advantages."""


def even_length(response: str, answer: str) -> float:
    return float(len(response) % 2 == 0)
