"""Physical units written after an answer's value: read them so that two different units never match.

Units are dropped before values are compared (5 cm equals a gold of 5), but when both answers name a
known unit, the units must be the same: 5 m is not 5 cm, 3 cm^2 is not 3 cm. No conversion is done
(100 cm does not equal 1 m): an answer in another unit than the gold's scores 0. Words outside the
table ("12 students", "6 square units") carry no unit and never block a match.
"""
from __future__ import annotations

import re

_NAMES: dict[str, tuple[str, ...]] = {
    # length
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "km": ("km", "kilometer", "kilometers", "kilometre", "kilometres"),
    "in": ("in", "inch", "inches"),
    "ft": ("ft", "foot", "feet"),
    "yd": ("yd", "yard", "yards"),
    "mi": ("mi", "mile", "miles"),
    # mass
    "mg": ("mg", "milligram", "milligrams"),
    "g": ("g", "gram", "grams", "gm"),
    "kg": ("kg", "kilogram", "kilograms", "kilo", "kilos"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "oz": ("oz", "ounce", "ounces"),
    "t": ("ton", "tons", "tonne", "tonnes"),
    # time
    "s": ("s", "sec", "secs", "second", "seconds"),
    "min": ("min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "day": ("day", "days"),
    "week": ("week", "weeks"),
    "month": ("month", "months"),
    "year": ("year", "years", "yr", "yrs"),
    # volume
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "l": ("l", "liter", "liters", "litre", "litres"),
    "gal": ("gallon", "gallons", "gal"),
    # money, angle, speed
    "dollar": ("dollar", "dollars"),
    "cent": ("cent", "cents"),
    "euro": ("euro", "euros"),
    "yuan": ("yuan",),
    "deg": ("degree", "degrees", "deg"),
    "rad": ("radian", "radians", "rad"),
    "mph": ("mph",),
    "km/h": ("km/h", "kph", "kmh"),
    "m/s": ("m/s",),
}
CANONICAL = {name: unit for unit, names in _NAMES.items() for name in names}
_POWER_WORDS = {"square": 2, "sq": 2, "squared": 2, "cubic": 3, "cu": 3, "cubed": 3}
_WRAPPER = re.compile(r"\\(?:text|mbox|mathrm|textrm|textnormal|textbf|textit|mathit|operatorname)\s*\{([^{}]*)\}")
_EXPONENT = re.compile(r"\^\s*\{?\s*(\d)\s*\}?")


def canonical_unit(text: str) -> str | None:
    """The canonical unit of a trailing unit string ("\\text{ cm}^2", "square feet", "km"), or None
    when it names no unit of the table (a count noun such as "students", or "units")."""
    s = _WRAPPER.sub(r" \1 ", text)
    power = 1
    exponent = _EXPONENT.search(s)
    if exponent:
        power = int(exponent.group(1))
        s = _EXPONENT.sub(" ", s)
    words = [w for w in re.split(r"[\s.{}]+", s.lower()) if w]
    if words and words[0] in _POWER_WORDS:
        power *= _POWER_WORDS[words.pop(0)]
    if words and words[-1] in ("squared", "cubed"):
        power *= _POWER_WORDS[words.pop()]
    if len(words) != 1 or words[0] not in CANONICAL:
        return None
    unit = CANONICAL[words[0]]
    return unit if power == 1 else f"{unit}^{power}"


def units_conflict(a: str | None, b: str | None) -> bool:
    """True when both answers name a known unit and the units differ."""
    return a is not None and b is not None and a != b
