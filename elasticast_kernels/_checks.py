"""Argument checks for the package's public boundaries, one rule everywhere.

A value of the wrong type is a ``TypeError``; a value of the right type that is out of range is a
``ValueError``. Both name the argument. ``bool`` is never accepted as a number: ``True`` is an int
to Python, but a caller who passes it where a count goes has made a mistake.
"""
from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int (numpy and 0-d tensor integers included) within ``[minimum, maximum]``.

    Raises:
        TypeError: ``value`` is a bool or not an integer. ValueError: it is outside the bounds.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            bound = f">= {minimum}"
        elif minimum is None:
            bound = f"<= {maximum}"
        else:
            bound = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_optional_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """:func:`check_int`, with ``None`` passed through."""
    return None if value is None else check_int(name, value, minimum, maximum)


def check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite Python float (ints accepted), greater than 0 when ``positive``.

    Raises:
        TypeError: ``value`` is a bool or not a real number. ValueError: NaN, infinite, or not
        positive when ``positive``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_path(name: str, value: Any) -> str:
    """``value`` (a str or ``os.PathLike``) as a str path.

    Raises:
        TypeError: ``value`` is neither.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    return os.fspath(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself when it is a bool (not 0/1 or a truthy object).

    Raises:
        TypeError: ``value`` is not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value
