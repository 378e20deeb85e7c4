"""Argument checks shared by the pure modules (torch-free)."""


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
