"""YAML output that reads like Go's ``yaml.v2``, as ``lxc`` writes it (``format.render_yaml``)."""

from __future__ import annotations

from typing import Any

import yaml


class _GoLikeDumper(yaml.SafeDumper):
    """A dumper whose output reads like ``yaml.v2``: no wrapping, timestamps left plain."""


_GoLikeDumper.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # yaml.v2 double-quotes strings that would read back as another type ("0", "true", "").
    style: str | None = None
    if "\n" in data:
        style = "|"
    elif data == "" or dumper.resolve(yaml.ScalarNode, data, (True, False)) != (
            "tag:yaml.org,2002:str"):
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_GoLikeDumper.add_representer(str, _represent_str)


def render_yaml(data: Any, sort_keys: bool = False) -> str:
    """Block-style YAML, keys in the server's order unless ``sort_keys``."""
    return yaml.dump(data, Dumper=_GoLikeDumper, default_flow_style=False,
                     sort_keys=sort_keys, allow_unicode=True, width=1 << 30)
