"""A user's reward function, `reward.custom_fn = "module:function"`: loaded and checked the same way by
the driver before anything starts (cluster/train.py) and by every reward actor, so a function that
cannot run is refused with its cause instead of failing inside the actors."""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

CustomFn = Callable[[str, str], float]


class CustomFnError(ValueError):
    """reward.custom_fn cannot be used: the message names the module, the function and the cause."""


def load_custom_fn(spec: str) -> CustomFn:
    """The function `spec` names ("module:function"), which must take (response, answer) positionally."""
    module_name, _, name = spec.partition(":")
    where = f"reward.custom_fn={spec}"
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to see, by name
        raise CustomFnError(f"{where}: module {module_name!r} cannot be imported: "
                            f"{type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        raise CustomFnError(f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                            f"has no attribute {name!r}")
    if not callable(fn):
        raise CustomFnError(f"{where}: {name!r} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind("response", "answer")
    except TypeError as err:
        raise CustomFnError(f"{where}: {name}{_signature(fn)} cannot be called as {name}(response, answer): "
                            f"{err}") from err
    return fn


def _signature(fn: Callable) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"
