"""Image store: import validation, fingerprints, rootfs templates, template rendering.

Images are tiny synthetic tarballs built with :mod:`tarfile` in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from node_agent.images import ImageError, ImageNotFound, ImageStore, render
from node_agent.images.metadata import parse_metadata

SHIFT = 1000000
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

Member = tuple[tarfile.TarInfo, bytes]


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
          uid: int = 0, gid: int = 0, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1700000000
    return info, data


def metadata(**extra: object) -> bytes:
    meta: dict[str, object] = {
        "architecture": "amd64",
        "creation_date": 1700000000,
        "properties": {"os": "test", "release": 1},
        "templates": {"/etc/hostname": {"when": ["create", "copy"], "template": "hostname.tpl"}},
    }
    meta.update(extra)
    return yaml.safe_dump(meta).encode()


def write_tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def base_rootfs(prefix: str = "rootfs/") -> list[Member]:
    return [
        entry(prefix.rstrip("/") or ".", tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}bin", tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}bin/busybox", data=b"#!fake\n", mode=0o755),
        entry(f"{prefix}bin/sh", tarfile.SYMTYPE, link="/bin/busybox", mode=0o777),
        entry(f"{prefix}etc", tarfile.DIRTYPE, mode=0o755),
        entry(f"{prefix}etc/hostname", data=b"placeholder\n"),
    ]


def unified(path: Path, extra: Sequence[Member] = (), meta: bytes | None = None,
            tpl: bytes = b"{{ instance.name }}\n") -> Path:
    members = [entry("metadata.yaml", data=meta if meta is not None else metadata()),
               entry("templates", tarfile.DIRTYPE, mode=0o755),
               entry("templates/hostname.tpl", data=tpl)]
    return write_tar(path, members + base_rootfs() + list(extra))


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def leftovers(store: ImageStore) -> list[str]:
    return [p.name for p in store.root.iterdir() if p.name.startswith(".")]


# -- import ----------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_tarball(store: ImageStore, tmp_path: Path) -> None:
    image = unified(tmp_path / "img.tar.gz")
    info = store.import_file(image)
    assert info.fingerprint == hashlib.sha256(image.read_bytes()).hexdigest()
    assert info.size == image.stat().st_size
    assert info.filename == "img.tar.gz"
    assert info.architecture == "x86_64"  # "amd64" normalised to LXD's name
    assert info.type == "container"
    assert info.properties == {"os": "test", "release": "1"}
    assert info.created_at == 1700000000 and info.expires_at is None
    assert info.templates["/etc/hostname"]["template"] == "hostname.tpl"
    assert store.export_paths(info.fingerprint)[0].read_bytes() == image.read_bytes()


def test_reimport_returns_the_stored_image(store: ImageStore, tmp_path: Path) -> None:
    image = unified(tmp_path / "img.tar.gz")
    first = store.import_file(image)
    second = store.import_file(image)
    assert first == second
    assert [i.fingerprint for i in store.list()] == [first.fingerprint]
    assert leftovers(store) == []


@pytest.mark.parametrize("name", ["rootfs/../../escape", "../escape", "/etc/passwd",
                                  "rootfs/bin/../../../x"])
def test_member_escaping_the_image_is_rejected(store: ImageStore, tmp_path: Path,
                                               name: str) -> None:
    image = unified(tmp_path / "bad.tar.gz", [entry(name, data=b"x")])
    with pytest.raises(ImageError, match="unsafe"):
        store.import_file(image)
    assert store.list() == [] and leftovers(store) == []


def test_hardlink_escaping_the_image_is_rejected(store: ImageStore, tmp_path: Path) -> None:
    image = unified(tmp_path / "bad.tar.gz",
                    [entry("rootfs/x", tarfile.LNKTYPE, link="../../etc/shadow")])
    with pytest.raises(ImageError, match="unsafe"):
        store.import_file(image)


def test_device_node_outside_rootfs_is_rejected(store: ImageStore, tmp_path: Path) -> None:
    image = unified(tmp_path / "bad.tar.gz", [entry("templates/null", tarfile.CHRTYPE)])
    with pytest.raises(ImageError, match="device node"):
        store.import_file(image)


@pytest.mark.parametrize("meta, message", [
    (b"architecture: x86_64\n", "creation_date"),
    (b"creation_date: 1\n", "architecture"),
    (b"- a list\n", "not a mapping"),
    (b"architecture: x86_64\ncreation_date: soon\n", "non-numeric"),
])
def test_incomplete_metadata_is_rejected(store: ImageStore, tmp_path: Path, meta: bytes,
                                         message: str) -> None:
    with pytest.raises(ImageError, match=message):
        store.import_file(unified(tmp_path / "bad.tar.gz", meta=meta))


def test_tarball_without_metadata_is_rejected(store: ImageStore, tmp_path: Path) -> None:
    image = write_tar(tmp_path / "bad.tar", base_rootfs(), mode="w")
    with pytest.raises(ImageError, match="no metadata.yaml"):
        store.import_file(image)


def test_file_that_is_not_a_tarball_is_rejected(store: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ImageError, match="not a valid tarball"):
        store.import_file(junk)
    assert leftovers(store) == []


def test_image_without_rootfs_is_rejected(store: ImageStore, tmp_path: Path) -> None:
    image = write_tar(tmp_path / "meta.tar.gz", [entry("metadata.yaml", data=metadata())])
    with pytest.raises(ImageError, match="rootfs"):
        store.import_file(image)


def test_progress_is_reported(store: ImageStore, tmp_path: Path) -> None:
    seen: list[str] = []
    store.import_file(unified(tmp_path / "img.tar.gz"), progress=seen.append)
    assert "metadata: 100%" in seen


# -- split images ----------------------------------------------------------------------


def split_image(tmp_path: Path) -> tuple[Path, Path]:
    meta = write_tar(tmp_path / "meta.tar.xz", [
        entry("metadata.yaml", data=metadata()), entry("templates/hostname.tpl",
                                                       data=b"{{ container.name }}\n")],
        mode="w:xz")
    rootfs = write_tar(tmp_path / "rootfs.tar.xz", base_rootfs("./"), mode="w:xz")
    return meta, rootfs


def test_split_fingerprint_covers_metadata_then_rootfs(store: ImageStore,
                                                       tmp_path: Path) -> None:
    meta, rootfs = split_image(tmp_path)
    info = store.import_file(meta, rootfs)
    expected = hashlib.sha256(meta.read_bytes() + rootfs.read_bytes()).hexdigest()
    assert info.fingerprint == expected
    assert info.size == meta.stat().st_size + rootfs.stat().st_size
    paths = store.export_paths(info.fingerprint)
    assert [p.read_bytes() for p in paths] == [meta.read_bytes(), rootfs.read_bytes()]
    tree = store.rootfs_template(info.fingerprint, None)
    assert os.readlink(tree / "bin/sh") == "/bin/busybox"


def test_split_rootfs_tarball_with_traversal_is_rejected(store: ImageStore,
                                                         tmp_path: Path) -> None:
    meta, _ = split_image(tmp_path)
    rootfs = write_tar(tmp_path / "evil.tar", [entry("../../x", data=b"x")], mode="w")
    with pytest.raises(ImageError, match="unsafe"):
        store.import_file(meta, rootfs)


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools")
def test_split_squashfs_rootfs_is_unpacked(store: ImageStore, tmp_path: Path) -> None:
    meta, _ = split_image(tmp_path)
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/busybox").write_bytes(b"#!fake\n")
    os.chmod(src / "bin/busybox", 0o4755)
    os.symlink("/bin/busybox", src / "bin/sh")
    squash = tmp_path / "rootfs.squashfs"
    subprocess.run(["mksquashfs", str(src), str(squash), "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    info = store.import_file(meta, squash)
    tree = store.rootfs_template(info.fingerprint, SHIFT if os.geteuid() == 0 else None)
    assert os.readlink(tree / "bin/sh") == "/bin/busybox"
    st = os.stat(tree / "bin/busybox")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    if os.geteuid() == 0:
        assert (st.st_uid, os.lstat(tree / "bin/sh").st_uid, os.stat(tree).st_uid) == (
            SHIFT, SHIFT, SHIFT)


def test_qcow2_rootfs_makes_a_virtual_machine_image(store: ImageStore, tmp_path: Path) -> None:
    meta, _ = split_image(tmp_path)
    disk = tmp_path / "rootfs.img"
    disk.write_bytes(b"QFI\xfb" + bytes(508))
    info = store.import_file(meta, disk)
    assert info.type == "virtual-machine"
    with pytest.raises(ImageError, match="virtual-machine"):
        store.rootfs_template(info.fingerprint, None)


# -- a failed import keeps what was there -------------------------------------------------


WRONG_FP = "0" * 64


def assert_intact(store: ImageStore, fp: str, *sources: Path) -> None:
    """The image is still listed and exports exactly its original bytes."""
    assert [i.fingerprint for i in store.list()] == [fp]
    exported = store.export_paths(fp)
    assert [p.read_bytes() for p in exported] == [s.read_bytes() for s in sources]
    assert leftovers(store) == []


def test_wrong_fingerprint_on_reimport_leaves_the_existing_image_intact(
        store: ImageStore, tmp_path: Path) -> None:
    image = unified(tmp_path / "img.tar.gz")
    fp = store.import_file(image).fingerprint
    with pytest.raises(ImageError, match="Fingerprint mismatch"):
        store.import_file(image, expected=WRONG_FP)
    assert_intact(store, fp, image)
    assert store.rootfs_template(fp, None).is_dir()


def test_wrong_fingerprint_on_split_reimport_leaves_the_existing_image_intact(
        store: ImageStore, tmp_path: Path) -> None:
    meta, rootfs = split_image(tmp_path)
    fp = store.import_file(meta, rootfs).fingerprint
    with pytest.raises(ImageError, match="Fingerprint mismatch"):
        store.import_file(meta, rootfs, expected=WRONG_FP)
    assert_intact(store, fp, meta, rootfs)


def test_wrong_fingerprint_on_a_new_image_stores_nothing(store: ImageStore,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="Fingerprint mismatch"):
        store.import_file(unified(tmp_path / "img.tar.gz"), expected=WRONG_FP)
    assert store.list() == [] and list(store.root.iterdir()) == []


def test_expected_fingerprint_is_accepted_in_any_case(store: ImageStore,
                                                      tmp_path: Path) -> None:
    image = unified(tmp_path / "img.tar.gz")
    fp = hashlib.sha256(image.read_bytes()).hexdigest()
    assert store.import_file(image, expected=fp.upper()).fingerprint == fp


# -- metadata.yaml: no aliases, string maps ----------------------------------------------

# Each level repeats the one before nine times: about 600 bytes that would expand
# to 9**6 strings, megabytes once written to image.json or an API answer.
ALIAS_BOMB = b"""architecture: x86_64
creation_date: 1700000000
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
properties:
  description: *f
"""


def test_metadata_with_yaml_aliases_is_refused() -> None:
    with pytest.raises(ImageError, match="alias"):
        parse_metadata(ALIAS_BOMB, "image")


def test_a_single_alias_is_refused_too() -> None:
    meta = b"architecture: &x x86_64\ncreation_date: 1\nproperties: {os: *x}\n"
    with pytest.raises(ImageError, match="alias"):
        parse_metadata(meta, "image")


def test_metadata_nested_too_deeply_is_refused() -> None:
    meta = b"architecture: x86_64\ncreation_date: 1\nx: " + b"[" * 100000 + b"]" * 100000
    with pytest.raises(ImageError, match="nested too deeply"):
        parse_metadata(meta, "image")


def test_alias_bomb_image_is_refused_and_leaves_nothing(store: ImageStore,
                                                        tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="alias"):
        store.import_file(unified(tmp_path / "bomb.tar.gz", meta=ALIAS_BOMB))
    assert store.list() == [] and list(store.root.iterdir()) == []


@pytest.mark.parametrize("properties, message", [
    ({"os": {"nested": "map"}}, "properties.os"),
    ({"os": ["a", "list"]}, "properties.os"),
    (["not", "a", "map"], "properties"),
    ("a string", "properties"),
])
def test_properties_must_map_strings_to_strings(properties: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_metadata(metadata(properties=properties), "image")


def test_scalar_properties_become_strings_as_in_lxd() -> None:
    meta = parse_metadata(metadata(properties={"release": 22.04, "lts": True, "x": None,
                                               7: "seven"}), "image")
    assert meta["properties"] == {"release": "22.04", "lts": "true", "x": "", "7": "seven"}


@pytest.mark.parametrize("templates, message", [
    ({"/etc/hostname": "hostname.tpl"}, "templates./etc/hostname"),
    ({"/etc/hostname": {"template": ["a"], "when": ["create"]}}, "template"),
    ({"/etc/hostname": {"template": "t.tpl", "when": "create"}}, "when"),
    ({"/etc/hostname": {"template": "t.tpl", "when": [["create"]]}}, "when"),
    ({"/etc/hostname": {"template": "t.tpl", "properties": {"a": {"b": "c"}}}},
     "properties.a"),
    ({"/etc/hostname": {"template": "t.tpl", "create_only": "maybe"}}, "create_only"),
    (["/etc/hostname"], "templates"),
])
def test_templates_must_have_lxd_shape(templates: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_metadata(metadata(templates=templates), "image")


def test_images_written_by_lxd_pass_the_shape_checks() -> None:
    meta = parse_metadata(b"""architecture: x86_64
creation_date: 1795778061
expiry_date: 0
properties:
  description: busybox published by LXD 5.0.2
templates:
  /etc/hostname:
    when:
    - create
    - copy
    create_only: false
    template: hostname.tpl
    properties: {}
""", "image")
    assert meta["templates"]["/etc/hostname"]["when"] == ["create", "copy"]
    assert meta["properties"] == {"description": "busybox published by LXD 5.0.2"}


# -- lookup and delete -------------------------------------------------------------------


def test_resolve_prefix_finds_unique_and_refuses_ambiguous(store: ImageStore,
                                                           tmp_path: Path) -> None:
    by_first: dict[str, str] = {}
    for n in range(17):  # pigeonhole: two fingerprints share their first hex digit
        info = store.import_file(unified(tmp_path / f"i{n}.tar", meta=metadata(serial=n)))
        fp = info.fingerprint
        assert store.resolve_prefix(fp[:12]) == fp
        assert store.resolve_prefix(fp.upper()) == fp
        if fp[0] in by_first:
            with pytest.raises(ImageNotFound, match="ambiguous"):
                store.resolve_prefix(fp[0])
            break
        by_first[fp[0]] = fp
    with pytest.raises(ImageNotFound):
        store.resolve_prefix("")
    with pytest.raises(ImageNotFound):
        store.resolve_prefix("zz")


def test_delete_removes_image_and_templates(store: ImageStore, tmp_path: Path) -> None:
    fp = store.import_file(unified(tmp_path / "img.tar.gz")).fingerprint
    store.rootfs_template(fp, None)
    store.delete(fp)
    assert not store.has(fp) and store.list() == [] and leftovers(store) == []
    with pytest.raises(ImageNotFound):
        store.info(fp)
    with pytest.raises(ImageNotFound):
        store.delete(fp)


@pytest.mark.parametrize("fp", ["../../etc", "", "a" * 63, "A" * 64])
def test_malformed_fingerprint_is_not_found(store: ImageStore, fp: str) -> None:
    with pytest.raises(ImageNotFound):
        store.info(fp)
    assert not store.has(fp)


# -- rootfs templates --------------------------------------------------------------------


@needs_root
def test_uid_shift_gives_files_to_the_container_root(store: ImageStore,
                                                     tmp_path: Path) -> None:
    extra = [entry("rootfs/bin/su", data=b"x", mode=0o4755),
             entry("rootfs/home", tarfile.DIRTYPE, mode=0o755),
             entry("rootfs/home/user", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
             entry("rootfs/home/user/f", data=b"x", mode=0o2640, uid=1000, gid=100)]
    fp = store.import_file(unified(tmp_path / "img.tar.gz", extra)).fingerprint
    tree = store.rootfs_template(fp, SHIFT)
    assert tree.name == f"rootfs-{SHIFT}"

    def owner(rel: str) -> tuple[int, int, int]:
        st = os.lstat(tree / rel)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner(".") == (SHIFT, SHIFT, 0o755)
    assert owner("bin/su") == (SHIFT, SHIFT, 0o4755)
    assert owner("bin/sh")[:2] == (SHIFT, SHIFT)  # the symlink itself
    assert owner("home/user") == (SHIFT + 1000, SHIFT + 1000, 0o700)
    assert owner("home/user/f") == (SHIFT + 1000, SHIFT + 100, 0o2640)
    privileged = store.rootfs_template(fp, None)
    assert privileged.name == "rootfs-privileged"
    assert os.lstat(privileged / "home/user/f").st_uid == 1000


@needs_root
def test_device_nodes_are_skipped_and_hardlinks_kept(store: ImageStore, tmp_path: Path) -> None:
    extra = [entry("rootfs/dev", tarfile.DIRTYPE, mode=0o755),
             entry("rootfs/dev/null", tarfile.CHRTYPE, mode=0o666),
             entry("rootfs/bin/ash", tarfile.LNKTYPE, link="rootfs/bin/busybox"),
             entry("rootfs/dev/nul2", tarfile.LNKTYPE, link="rootfs/dev/null")]
    fp = store.import_file(unified(tmp_path / "img.tar.gz", extra)).fingerprint
    tree = store.rootfs_template(fp, None)
    assert not os.path.lexists(tree / "dev/null") and not os.path.lexists(tree / "dev/nul2")
    assert os.stat(tree / "bin/ash").st_ino == os.stat(tree / "bin/busybox").st_ino


def test_write_through_a_planted_symlink_is_refused(store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    extra = [entry("rootfs/evil", tarfile.SYMTYPE, link=str(outside)),
             entry("rootfs/evil/pwned", data=b"x")]
    fp = store.import_file(unified(tmp_path / "img.tar.gz", extra)).fingerprint
    with pytest.raises(ImageError, match="not a directory"):
        store.rootfs_template(fp, None)
    assert list(outside.iterdir()) == []
    assert not (store.root / fp / "rootfs-privileged").exists()
    assert [p.name for p in (store.root / fp).iterdir() if ".tmp" in p.name] == []


def test_concurrent_callers_share_one_template(store: ImageStore, tmp_path: Path) -> None:
    fp = store.import_file(unified(tmp_path / "img.tar.gz")).fingerprint
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(store.rootfs_template(fp, None)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (results[0] / "bin/busybox").read_bytes() == b"#!fake\n"


def test_template_left_half_built_by_a_crash_is_rebuilt(store: ImageStore,
                                                        tmp_path: Path) -> None:
    fp = store.import_file(unified(tmp_path / "img.tar.gz")).fingerprint
    stale = store.root / fp / ".rootfs-privileged.tmp"
    (stale / "bin").mkdir(parents=True)
    tree = store.rootfs_template(fp, None)
    assert (tree / "bin/busybox").is_file() and not stale.exists()


# -- template rendering --------------------------------------------------------------------


CONTEXT = {"instance": {"name": "web1"}, "container": {"name": "web1"},
           "config": {"user.user-data": "#cloud-config"}, "properties": {"default": "none"}}


@pytest.mark.parametrize("text, expected", [
    ("{{ instance.name }}", "web1"),
    ("host={{container.name}}\n", "host=web1\n"),
    ("{{ instance.missing }}|", "|"),
    ('{{ instance.missing|default:"x" }}', "x"),
    ('{{ config_get("user.user-data", properties.default) }}', "#cloud-config"),
    ('{{ config_get("user.vendor-data", properties.default) }}', "none"),
    ("{% if instance.name %}x{% endif %}", "{% if instance.name %}x{% endif %}"),
    ("{{ instance.name | upper }}", "{{ instance.name | upper }}"),
    ("no expressions", "no expressions"),
])
def test_render_supports_the_pongo2_subset_images_use(text: str, expected: str) -> None:
    assert render(text, CONTEXT) == expected


def rendered_store(store: ImageStore, tmp_path: Path, tpl_meta: dict[str, object],
                   extra: Sequence[Member] = ()) -> tuple[str, Path]:
    image = unified(tmp_path / "img.tar.gz", list(extra), meta=metadata(templates=tpl_meta))
    fp = store.import_file(image).fingerprint
    rootfs = tmp_path / "instance"
    shutil.copytree(store.rootfs_template(fp, None), rootfs, symlinks=True)
    return fp, rootfs


def test_templates_render_for_their_triggers_only(store: ImageStore, tmp_path: Path) -> None:
    fp, rootfs = rendered_store(store, tmp_path, {
        "/etc/hostname": {"when": ["create", "copy"], "template": "hostname.tpl"}})
    store.render_templates(fp, rootfs, "web1", "start", None)
    assert (rootfs / "etc/hostname").read_text() == "placeholder\n"
    store.render_templates(fp, rootfs, "web1", "create", None)
    assert (rootfs / "etc/hostname").read_text() == "web1\n"
    with pytest.raises(ImageError, match="trigger"):
        store.render_templates(fp, rootfs, "web1", "boot", None)


@needs_root
def test_rendered_new_file_belongs_to_the_shifted_root(store: ImageStore,
                                                       tmp_path: Path) -> None:
    fp, rootfs = rendered_store(store, tmp_path, {
        "/etc/new/dir/name": {"when": ["create"], "template": "hostname.tpl"}})
    store.render_templates(fp, rootfs, "web1", "create", SHIFT)
    for rel in ("etc/new", "etc/new/dir", "etc/new/dir/name"):
        assert os.lstat(rootfs / rel).st_uid == SHIFT
    assert (rootfs / "etc/new/dir/name").read_text() == "web1\n"


def test_rendering_through_a_symlink_stays_inside_rootfs(store: ImageStore,
                                                         tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    extra = [entry("rootfs/etc/abs", tarfile.SYMTYPE, link=str(victim)),
             entry("rootfs/etc/rel", tarfile.SYMTYPE, link="../../../../../../victim2")]
    fp, rootfs = rendered_store(store, tmp_path, {
        "/etc/abs": {"when": ["create"], "template": "hostname.tpl"},
        "/etc/rel": {"when": ["create"], "template": "hostname.tpl"}}, extra)
    store.render_templates(fp, rootfs, "web1", "create", None)
    assert not victim.exists() and not (tmp_path.parent / "victim2").exists()
    assert (rootfs / str(victim).lstrip("/")).read_text() == "web1\n"
    assert (rootfs / "victim2").read_text() == "web1\n"


def test_create_only_template_keeps_an_existing_file(store: ImageStore,
                                                     tmp_path: Path) -> None:
    fp, rootfs = rendered_store(store, tmp_path, {
        "/etc/hostname": {"when": ["copy"], "template": "hostname.tpl", "create_only": True}})
    store.render_templates(fp, rootfs, "web1", "copy", None)
    assert (rootfs / "etc/hostname").read_text() == "placeholder\n"


def test_template_name_escaping_templates_dir_is_rejected(store: ImageStore,
                                                          tmp_path: Path) -> None:
    fp, rootfs = rendered_store(store, tmp_path, {
        "/etc/hostname": {"when": ["create"], "template": "../metadata.yaml"}})
    with pytest.raises(ImageError, match="unsafe"):
        store.render_templates(fp, rootfs, "web1", "create", None)


def test_leftovers_of_a_crash_are_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / ".deleting-abc/x").mkdir(parents=True)
    old_import = root / ".import-old"
    old_import.mkdir()
    os.utime(old_import, (0, 0))
    (root / ".import-recent").mkdir()  # may belong to a running import
    store = ImageStore(root)
    assert sorted(leftovers(store)) == [".import-recent"]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_zstd_rootfs_tarball_is_read_through_zstd(store: ImageStore, tmp_path: Path) -> None:
    meta, _ = split_image(tmp_path)
    plain = write_tar(tmp_path / "rootfs.tar", base_rootfs("./"), mode="w")
    subprocess.run(["zstd", "-q", str(plain), "-o", str(tmp_path / "rootfs.tar.zst")],
                   check=True)
    info = store.import_file(meta, tmp_path / "rootfs.tar.zst")
    tree = store.rootfs_template(info.fingerprint, None)
    assert (tree / "bin/busybox").read_bytes() == b"#!fake\n"
