"""``corral image ...``: build, import, list, show, export, delete images and their aliases.

Uploads are what ``lxc image import`` sends to ``POST /1.0/images``: a unified tarball as
``application/octet-stream`` (with ``X-LXD-filename``), or a split image as
``multipart/form-data`` with a ``metadata`` part then a ``rootfs`` part. The server
answers with an operation whose metadata holds the ``fingerprint``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import ApiError, Client, CliError, error_from
from corral_cli.progress import CHUNK, Progress, stream_file

IMAGE_SHOW_FIELDS = ("auto_update", "properties", "public", "expires_at", "profiles")
IMAGE_HEADER = ["ALIAS", "FINGERPRINT", "PUBLIC", "DESCRIPTION", "ARCHITECTURE", "TYPE",
                "SIZE", "UPLOAD DATE"]


def alias_cell(aliases: list[dict[str, Any]]) -> str:
    """The shortest alias, plus ``(N more)`` when there are others, as ``lxc`` shows it."""
    names = [str(a.get("name", "")) for a in aliases]
    if not names:
        return ""
    shortest = names[0]
    for name in names[1:]:
        if name and len(name) < len(shortest):
            shortest = name
    return f"{shortest} ({len(names) - 1} more)" if len(names) > 1 else shortest


def image_row(image: dict[str, Any]) -> list[str]:
    return [alias_cell(image.get("aliases") or []), str(image.get("fingerprint", ""))[:12],
            "yes" if image.get("public") else "no",
            str((image.get("properties") or {}).get("description", "")),
            str(image.get("architecture", "")), (image.get("type") or "container").upper(),
            f"{int(image.get('size') or 0) / 1024 / 1024:.2f}MB",
            fmt.upload_date(image.get("uploaded_at"))]


def image_matches(filters: list[str], image: dict[str, Any]) -> bool:
    """A fingerprint or alias prefix, or ``key=value`` on the image properties."""
    for flt in filters:
        if "=" in flt:
            key, value = flt.split("=", 1)
            if (image.get("properties") or {}).get(key) != value:
                return False
        elif not (str(image.get("fingerprint", "")).startswith(flt) or any(
                str(a.get("name", "")).startswith(flt) for a in image.get("aliases") or [])):
            return False
    return True


async def resolve(client: Client, ref: str) -> str:
    """An alias or a (partial) fingerprint to the full fingerprint."""
    try:
        alias = await client.get(f"/1.0/images/aliases/{quote(ref, safe='')}")
        return str(alias["target"])
    except ApiError as exc:
        if exc.status_code != 404:
            raise
    image = await client.get(f"/1.0/images/{quote(ref, safe='')}")
    return str(image["fingerprint"])


async def upload(client: Client, meta: Path, rootfs: Path | None, public: bool,
                 quiet: bool) -> str:
    """POST /1.0/images; returns the fingerprint (also when the image already existed)."""
    import aiohttp

    headers = {"X-LXD-public": "true" if public else "false"}
    hasher = hashlib.sha256()
    progress = Progress("Transferring image: {}", quiet=quiet)
    with open(meta, "rb") as meta_file:
        if rootfs is None:
            size = meta.stat().st_size
            data: Any = stream_file(meta_file, size, progress, hasher)
            headers.update({"Content-Type": "application/octet-stream",
                            "X-LXD-filename": meta.name, "Content-Length": str(size)})
            rootfs_file = None
        else:
            for part in (meta, rootfs):  # the split fingerprint is sha256(metadata + rootfs)
                with open(part, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        hasher.update(chunk)
            rootfs_file = open(rootfs, "rb")  # noqa: SIM115 - closed below
            data = aiohttp.MultipartWriter("form-data")
            for name, handle, path in (("metadata", meta_file, meta),
                                       ("rootfs", rootfs_file, rootfs)):
                part = data.append(handle, {"Content-Type": "application/octet-stream"})
                part.set_content_disposition("form-data", name=name, filename=path.name)
        try:
            op = await client.call("POST", "/1.0/images", data=data, headers=headers,
                                   progress=progress)
        except ApiError as exc:
            if "already exists" not in exc.message:
                raise
            op = {"metadata": {"fingerprint": hasher.hexdigest()}}
        finally:
            progress.done()
            if rootfs_file is not None:
                rootfs_file.close()
    return str((op.get("metadata") or {}).get("fingerprint") or hasher.hexdigest())


async def ensure_alias(client: Client, name: str, fingerprint: str, description: str = "") -> None:
    """Create the alias, or point the existing one at ``fingerprint``: safe to repeat."""
    try:
        await client.call("POST", "/1.0/images/aliases",
                          {"name": name, "target": fingerprint, "description": description})
    except ApiError as exc:
        if exc.status_code != 409 and "already exists" not in exc.message:
            raise
        await client.call("PUT", f"/1.0/images/aliases/{quote(name, safe='')}",
                          {"target": fingerprint, "description": description})


async def import_(client: Client, args: argparse.Namespace) -> int:
    """``corral image import FILE [ROOTFS] [--alias A]...``."""
    meta = Path(args.file)
    rootfs = Path(args.rootfs) if args.rootfs else None
    for path in (meta, rootfs):
        if path is not None and not path.is_file():
            raise CliError(f"open {path}: no such file or directory")
    fingerprint = await upload(client, meta, rootfs, args.public, args.quiet)
    for alias in args.alias:
        await ensure_alias(client, alias, fingerprint)
    print(f"Image imported with fingerprint: {fingerprint}")
    return 0


def build_aliases(kind: str, vm: bool, uefi: bool, given: list[str] | None) -> list[str]:
    """The aliases a build gets: those given, else ``busybox``, ``busybox-vm`` for the VM
    image, ``busybox-vm-uefi`` for the one that boots through UEFI as LXD's VM images do."""
    if given:
        return list(given)
    return [f"{kind}-vm-uefi" if uefi else f"{kind}-vm" if vm else kind]


def build_request(kind: str, vm: bool, uefi: bool, aliases: list[str],
                  public: bool) -> dict[str, Any]:
    """The ``POST /1.0/images`` body that has the daemon build the image (corral's
    ``build`` source; ``uefi`` implies ``vm``) and create or move its aliases."""
    return {"source": {"type": "build", "kind": kind, "vm": vm or uefi, "uefi": uefi},
            "aliases": [{"name": name, "description": ""} for name in aliases],
            "public": public}


async def build(client: Client, args: argparse.Namespace) -> int:
    """``corral image build busybox [--vm [--uefi]] [--alias A]... [--public]``: the daemon
    builds the image and stores it as an upload (one API call, an operation whose
    ``build_progress`` is shown as ``Building: ...``), then points the aliases at it."""
    uefi = bool(getattr(args, "uefi", False))
    vm = bool(args.vm) or uefi
    body = build_request(args.kind, vm, uefi, build_aliases(args.kind, vm, uefi, args.alias),
                         bool(args.public))
    progress = Progress("Building: {}", quiet=args.quiet)
    started = time.monotonic()
    final = ""
    try:
        op = await client.call("POST", "/1.0/images", body, progress=progress)
        meta = op.get("metadata") or {}
        final = (f"Built {body['aliases'][0]['name']} "
                 f"({fmt.byte_size_si(int(meta.get('size') or 0))}) in "
                 f"{time.monotonic() - started:.1f}s")
    finally:
        progress.done(final)
    print(f"Image imported with fingerprint: {meta.get('fingerprint', '')}")
    return 0


async def list_(client: Client, args: argparse.Namespace) -> int:
    images = [i for i in await client.get("/1.0/images", params={"recursion": "1"}) or []
              if image_matches(args.filters, i)]
    rows = fmt.sort_rows([image_row(i) for i in images])
    sys.stdout.write(fmt.render(args.format, IMAGE_HEADER, rows, images))
    return 0


async def show(client: Client, args: argparse.Namespace) -> int:
    image = await client.get(f"/1.0/images/{await resolve(client, args.image)}")
    sys.stdout.write(fmt.render_yaml({k: image.get(k) for k in IMAGE_SHOW_FIELDS}))
    return 0


async def delete(client: Client, args: argparse.Namespace) -> int:
    for ref in args.images:
        await client.call("DELETE", f"/1.0/images/{await resolve(client, ref)}")
    return 0


def _export_name(disposition: str | None, fallback: str) -> str:
    for item in (disposition or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key == "filename" and value:
            return os.path.basename(value.strip('"'))
    return fallback


async def export(client: Client, args: argparse.Namespace) -> int:
    """``corral image export IMAGE [TARGET]``: a directory gets the server's file names;
    another TARGET gets the server's extension appended (``TARGET.tar.gz``) as with lxc."""
    fingerprint = await resolve(client, args.image)
    target = args.target
    async with client.raw("GET", f"/1.0/images/{fingerprint}/export") as resp:
        if resp.status >= 300:
            raise error_from(resp.status, await resp.text())
        progress = Progress("Exporting the image: {}", quiet=args.quiet)
        try:
            if resp.content_type.startswith("multipart/"):
                await _export_split(resp, target)
            else:
                name = _export_name(resp.headers.get("Content-Disposition"),
                                    f"{fingerprint}.tar.gz")
                if os.path.isdir(target):
                    dest = os.path.join(target, name)
                else:
                    ext = name.split(".", 1)[1] if "." in name else ""
                    dest = target if not ext or target.endswith("." + ext) else f"{target}.{ext}"
                await _save(resp.content, dest, resp.content_length or 0, progress)
        finally:
            progress.done()
    print("Image exported successfully!")
    return 0


async def _export_split(resp: Any, target: str) -> None:
    import aiohttp

    reader = aiohttp.MultipartReader.from_response(resp)
    while (part := await reader.next()) is not None:
        if not isinstance(part, aiohttp.BodyPartReader):
            continue
        name = part.filename or part.name or "part"
        if os.path.isdir(target):
            dest = os.path.join(target, os.path.basename(name))
        else:
            dest = target if part.name == "metadata" else f"{target}.root"
        with open(dest, "wb") as out:
            while chunk := await part.read_chunk():
                out.write(chunk)


async def _save(content: Any, dest: str, size: int, progress: Progress) -> None:
    done, started = 0, time.monotonic()
    with open(dest, "wb") as out:
        async for chunk in content.iter_chunked(CHUNK):
            out.write(chunk)
            done += len(chunk)
            speed = fmt.byte_size_si(done / max(time.monotonic() - started, 1e-3))
            progress.update(f"{done * 100 // size}% ({speed}/s)" if size
                            else f"{fmt.byte_size_si(done)} ({speed}/s)")


async def alias_create(client: Client, args: argparse.Namespace) -> int:
    await client.call("POST", "/1.0/images/aliases", {
        "name": args.alias, "target": args.fingerprint, "description": args.description})
    return 0


async def alias_delete(client: Client, args: argparse.Namespace) -> int:
    await client.call("DELETE", f"/1.0/images/aliases/{quote(args.alias, safe='')}")
    return 0


async def alias_list(client: Client, args: argparse.Namespace) -> int:
    aliases = [a for a in await client.get("/1.0/images/aliases", params={"recursion": "1"}) or []
               if not args.filters or any(str(a.get("name", "")).startswith(f)
                                          for f in args.filters)]
    rows = fmt.sort_rows([[str(a.get("name", "")), str(a.get("target", ""))[:12],
                           (a.get("type") or "container").upper(),
                           str(a.get("description", ""))] for a in aliases])
    sys.stdout.write(fmt.render(args.format, ["ALIAS", "FINGERPRINT", "TYPE", "DESCRIPTION"],
                                rows, aliases))
    return 0
