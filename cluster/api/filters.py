"""LXD's instance list filters (``?filter=status eq running and name ne c2``), pure."""

from __future__ import annotations

from typing import Any

from cluster.api.response import bad_request


def parse(expr: str) -> list[list[tuple[str, str, str]]]:
    """Disjunction of conjunctions of ``(key, op, value)``."""
    clauses: list[list[tuple[str, str, str]]] = []
    for alternative in expr.split(" or "):
        terms: list[tuple[str, str, str]] = []
        for term in alternative.split(" and "):
            words = term.strip().split(None, 2)
            if len(words) != 3 or words[1] not in ("eq", "ne"):
                raise bad_request(f"Invalid filter term {term.strip()!r}")
            terms.append((words[0], words[1], words[2].strip("\"'")))
        clauses.append(terms)
    return clauses


def _value(obj: dict[str, Any], key: str) -> str:
    if key.startswith(("config.", "expanded_config.")):
        section, _, sub = key.partition(".")
        return str(obj.get(section, {}).get(sub, ""))
    return str(obj.get(key, ""))


def matches(obj: dict[str, Any], clauses: list[list[tuple[str, str, str]]]) -> bool:
    for terms in clauses:
        if all((_value(obj, k).lower() == v.lower()) == (op == "eq") for k, op, v in terms):
            return True
    return False
