"""A user-style custom reward (reward.custom_fn) that guarantees a learning signal in a short test:
a near-random model almost never answers correctly, and all-zero rewards give zero advantages."""


def even_length(response: str, answer: str) -> float:
    return float(len(response) % 2 == 0)


def hang_on_marker(response: str, answer: str) -> float:
    """Fault injection: for the gold answer "hang", block forever, deaf to the actor's SIGALRM
    time limit (as a reward stuck in C code would be); otherwise like `even_length`."""
    if answer == "hang":
        import signal
        import time

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    return even_length(response, answer)
