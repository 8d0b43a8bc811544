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


def raise_on_marker(response: str, answer: str) -> float:
    """Fault injection: raises ValueError for the gold answer "bad", ZeroDivisionError for "zero",
    and sleeps (interruptibly: the actor's time limit stops it) for "slow"; otherwise `even_length`."""
    if answer == "bad":
        raise ValueError(f"cannot score {response[:10]!r}")
    if answer == "zero":
        return 1 / 0
    if answer == "slow":
        import time

        time.sleep(3600)
    return even_length(response, answer)


def raise_on_odd_length(response: str, answer: str) -> float:
    """A user function with a bug: it raises on every response of odd length."""
    if len(response) % 2:
        raise KeyError("odd")
    return 1.0


def grade_then_sleep(response: str, answer: str) -> float:
    """A user function that calls the grader (whose own time limit opens and closes inside), then runs
    long: the actor's limit for the user function must still stop it."""
    import time

    from reward import score

    value = score(response, answer)
    time.sleep(3600)
    return value


NOT_A_FUNCTION = 3


def two_args_required_three(response: str, answer: str, extra: str) -> float:
    return 0.0


def slow_even_length(response: str, answer: str) -> float:
    """A legitimately slow user function: 0.3 s per answer, within a 0.5 s limit."""
    import time

    time.sleep(0.3)
    return even_length(response, answer)


def even_length_for_even_answers(response: str, answer: str) -> float:
    """`even_length` for an even gold answer, always 0 for an odd one: about half the prompt groups
    have no reward variance (dynamic sampling's case, tests/test_dynamic_run.py)."""
    if int(answer) % 2:
        return 0.0
    return even_length(response, answer)
