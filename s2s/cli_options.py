"""`key=value` command-line options for the small commands (`python -m s2s.infer`, `s2s.pretrained`).

They take the same `key=value` form as the Hydra scripts, without Hydra's output directories and
config tree: a few typed options, each parsed here with an error that names the option and what it
accepts, so a typo is refused instead of ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


class OptionError(ValueError):
    """A command-line option that cannot be used; the message says what to write instead."""


def parse_options(
    arguments: Sequence[str], parsers: Mapping[str, Callable[[str], object]], usage: str
) -> tuple[list[str], dict[str, object]]:
    """Split `arguments` into positional ones and `key=value` options, each converted by its parser."""
    positional, options = [], {}
    for argument in arguments:
        if "=" not in argument:
            positional.append(argument)
            continue
        key, value = argument.split("=", 1)
        if key not in parsers:
            raise OptionError(f"unknown option {key!r}; the options are {', '.join(parsers)}\n{usage}")
        try:
            options[key] = parsers[key](value)
        except (TypeError, ValueError) as error:
            raise OptionError(f"option {key}={value!r}: {error}\n{usage}") from None
    return positional, options


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ValueError("expected true or false")


def optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    """`null` or `none` -> None, else `parse`."""
    return lambda value: None if value.strip().lower() in ("null", "none", "") else parse(value)
