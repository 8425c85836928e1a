"""Type predicates for user arguments, shared by layers, attacks and the exporter (a leaf: imports nothing
of sat_tf, so any layer may use it)."""

import numbers


def is_number(value):
    """A Python/NumPy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value):
    """A Python/NumPy integer, not a bool (a bool is an int to Python but a mistake as a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
