"""Notebook parameters as papermill delivers them.

``papermill -p datasets '["mnist", "digits"]'`` passes the *string* ``'["mnist", "digits"]'``
(``-y`` passes YAML and keeps the list). :func:`as_list` and :func:`as_dict` accept both, so
every list or dict parameter of the book works with either flag.
"""

from __future__ import annotations

import json


def _parsed(value, name: str, kind: type, example: str):
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") or text.startswith("{"):
            try:
                value = json.loads(text.replace("'", '"'))
            except json.JSONDecodeError as err:
                raise ValueError(f"Parameter {name!r}: cannot read {value!r} as a {kind.__name__} ({err}); "
                                 f"write it as {example}, or pass it with papermill's -y flag.") from None
    return value


def as_list(value, name: str) -> list | None:
    """``value`` as a list (``None`` stays ``None``); a JSON string from ``papermill -p`` is parsed."""
    if value is None:
        return None
    value = _parsed(value, name, list, '\'["mnist", "digits"]\'')
    if isinstance(value, str):
        return [value]  # one name given on its own
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"Parameter {name!r} takes a list, e.g. [\"mnist\", \"digits\"]; got {value!r}.")
    return list(value)


def as_dict(value, name: str) -> dict:
    """``value`` as a dict (``None`` gives ``{}``); a JSON string from ``papermill -p`` is parsed."""
    if value is None:
        return {}
    value = _parsed(value, name, dict, "'{\"epochs\": 1}'")
    if not isinstance(value, dict):
        raise ValueError(f"Parameter {name!r} takes a dict, e.g. {{\"epochs\": 1}}; got {value!r}.")
    return dict(value)
