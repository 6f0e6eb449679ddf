"""Remote servers the CLI knows, stored as ``lxc`` stores them, and ``REMOTE:NAME``.

``$CORRAL_CONF`` (default ``~/.config/corral``) holds::

    config.yml          default-remote and remotes (addr, auth_type, protocol, public)
    client.crt/.key     this client's certificate, presented to every HTTPS remote
    servercerts/R.crt   remote R's certificate, pinned (the only one accepted for R)

Any verb's instance or image argument may be written ``REMOTE:NAME`` (or just
``REMOTE:``); ``resolve`` strips the prefix and says which remote to talk to.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral_cli.client import UsageError

LOCAL = "local"
# Namespace attributes that may carry a REMOTE: prefix (never exec's command line).
NAME_ATTRS = ("name", "names", "image", "images", "old", "new", "paths", "filters",
              "instance", "args", "alias", "rootfs", "id", "target_remote")


def conf_dir() -> Path:
    explicit = os.environ.get("CORRAL_CONF")
    return Path(explicit) if explicit else Path.home() / ".config" / "corral"


@dataclass(frozen=True)
class Remote:
    """One HTTPS remote: its URL and where its pinned certificate lives."""

    name: str
    url: str  # https://host:port, no trailing slash

    @property
    def server_cert(self) -> Path:
        return conf_dir() / "servercerts" / f"{self.name}.crt"

    def ssl_context(self) -> ssl.SSLContext:
        """Present our client certificate; accept only the pinned server certificate."""
        # CLI start-up: cryptography (~100 ms) loads only for an HTTPS remote.
        from corral_shared import tls  # CLI start-up: only when a certificate is made

        crt, key = ensure_client_cert()
        try:
            pinned = self.server_cert.read_text()
        except OSError as exc:
            raise UsageError(f"No pinned certificate for remote {self.name!r} "
                             f"({self.server_cert}): add the remote again") from exc
        return tls.client_context(crt, key, pinned)


def ensure_client_cert() -> tuple[Path, Path]:
    """``client.crt``/``client.key`` in ``$CORRAL_CONF``, generated on first use (as lxc)."""
    from corral_shared import tls  # CLI start-up: only when a certificate is made

    root = conf_dir()
    crt, key = root / "client.crt", root / "client.key"
    user = os.environ.get("USER") or "root"
    tls.ensure_pair(crt, key, f"{user}@{socket.gethostname()}", [])
    return crt, key


def load_config() -> dict[str, Any]:
    path = conf_dir() / "config.yml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""  # PyYAML's import (~25 ms) is not needed then
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc}") from exc
    data: dict[str, Any] = {}
    if text:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"Cannot read {path}: {exc}") from exc
    data.setdefault("default-remote", LOCAL)
    remotes = data.setdefault("remotes", {}) or {}
    data["remotes"] = remotes
    remotes.setdefault(LOCAL, {"addr": "unix://", "public": False})
    data.setdefault("aliases", {})
    return data


def save_config(data: dict[str, Any]) -> None:
    root = conf_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = root / "config.yml.tmp"
    import yaml

    tmp.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    tmp.replace(root / "config.yml")


def remote_named(name: str, config: dict[str, Any] | None = None) -> Remote | None:
    """The HTTPS remote called ``name``; ``None`` for ``local``; ``UsageError`` if unknown."""
    config = config if config is not None else load_config()
    entry = config["remotes"].get(name)
    if entry is None:
        raise UsageError(f"Remote {name} doesn't exist")
    addr = str(entry.get("addr", ""))
    if name == LOCAL or addr.startswith("unix:"):
        return None
    return Remote(name, addr.rstrip("/"))


def split(value: str, known: set[str]) -> tuple[str | None, str]:
    """``"r1:c1"`` -> ``("r1", "c1")`` when ``r1`` is a known remote, else ``(None, value)``."""
    head, sep, tail = value.partition(":")
    if sep and head in known:
        return head, tail
    return None, value


def resolve(args: argparse.Namespace) -> Remote | None:
    """Strip ``REMOTE:`` prefixes from ``args`` in place; the remote they name (all must
    agree), else the default remote (``local`` = the unix socket; ``None``)."""
    if not (conf_dir() / "config.yml").exists():
        return None  # nothing configured: the unix socket, without touching any file
    config = load_config()
    known = set(config["remotes"])
    named: set[str] = set()
    for attr in NAME_ATTRS:
        value = getattr(args, attr, None)
        if isinstance(value, str):
            remote, rest = split(value, known)
            if remote is not None:
                named.add(remote)
                setattr(args, attr, rest or None)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            parts = [split(v, known) for v in value]
            named.update(r for r, _ in parts if r is not None)
            if any(r is not None for r, _ in parts):
                setattr(args, attr, [rest for _, rest in parts if rest])
    if len(named) > 1:
        raise UsageError(f"One command talks to one remote, not {', '.join(sorted(named))}")
    if named:
        return remote_named(named.pop(), config)
    if os.environ.get("CORRAL_SOCKET"):
        return None
    return remote_named(str(config.get("default-remote") or LOCAL), config)
