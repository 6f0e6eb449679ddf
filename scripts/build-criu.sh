#!/bin/sh
# Build and install CRIU >= 4 into /usr/local from a Debian source package.
#
# Why: Debian 12's own criu (3.17.1) fails `criu check` on newer kernels (vDSO layout), so
# corral builds a newer one from source. The default is sid's 4.2.1: trixie's 4.1.1 dumps and
# restores privileged containers, but cannot restore an unprivileged (user-namespaced) one
# with a veth NIC on kernels with Linux commit 7b735ef81286 ("rtnetlink: add missing
# netlink_ns_capable() check for peer netns"; Linux 7.0, in stable kernels too: the 6.18.44
# kernel here has it): criu's
# RTM_NEWLINK from inside the container's userns gets EPERM. CRIU 4.2.1 routes veth creation
# through its usernsd (criu PR #3006), but that request still fails here with EOPNOTSUPP:
# sent from the host netns without NLM_F_EXCL, the kernel first looks for an existing device
# with the container's ifindex (2) / name (eth0) *in the host* and tries to change it. This
# script adds NLM_F_EXCL to that one request (a one-line patch, see patch_veth_userns) and
# marks the build (`criu --version` prints "GitID: v4.2.1-corral1").
# Idempotent: does nothing if an installed criu already reports >= CRIU_MIN, carries the
# marker (unless CRIU_PATCH=0) and passes `criu check`. Adds one deb-src file under
# /etc/apt/sources.list.d/ (removes nothing), installs the build dependencies with apt, builds
# only the criu binary (no docs, no python tooling, no plugins) with `make -j2`, installs it
# as /usr/local/sbin/criu and prints how long it took.
#
# Environment: CRIU_SUITE (default sid; trixie gives 4.1.1), CRIU_MIN (default 4.2.1; "4"
#              accepts any 4.x), CRIU_PATCH (default 1; 0 builds upstream as is),
#              JOBS (default 2),
#              WORKDIR (default a fresh temp dir, removed at the end).
set -eu

SUITE="${CRIU_SUITE:-sid}"
MIN="${CRIU_MIN:-4.2.1}"
PATCH="${CRIU_PATCH:-1}"
MARK=corral1
JOBS="${JOBS:-2}"
SRC_FILE=/etc/apt/sources.list.d/corral-criu-src.sources
PREFIX=/usr/local
START=$(date +%s)

say() { printf 'build-criu: %s\n' "$*"; }
die() { printf 'build-criu: cannot build CRIU: %s\n' "$*" >&2; exit 1; }

criu_ok() {
    # $1: a criu binary. True if it is version >= $MIN and `criu check` passes on this kernel.
    [ -x "$1" ] || return 1
    v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -n1)
    [ -n "$v" ] && dpkg --compare-versions "$v" ge "$MIN" || return 1
    if [ "$PATCH" = 1 ]; then
        "$1" --version 2>/dev/null | grep -q "^GitID: .*$MARK" || return 1
    fi
    "$1" check >/dev/null 2>&1
}

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, install into $PREFIX)"

for c in "$PREFIX/sbin/criu" "$(command -v criu 2>/dev/null || true)"; do
    if [ -n "$c" ] && criu_ok "$c"; then
        say "$c already works: $("$c" --version | head -n1), criu check passed; nothing to do"
        exit 0
    fi
done

# 1. deb-src for the chosen suite, in a file of our own.
if [ ! -f "$SRC_FILE" ] || ! grep -q "^Suites: $SUITE\$" "$SRC_FILE"; then
    say "adding $SRC_FILE (deb-src $SUITE)"
    cat >"$SRC_FILE" <<EOF
# Added by corral scripts/build-criu.sh: source packages only (for CRIU >= 4).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || die "apt-get update failed"

# 2. Build dependencies of the criu binary (the package's Build-Depends minus docs/python).
#    iproute2 and iptables/nftables are run by criu itself when it dumps a network namespace.
say "installing build dependencies"
apt-get install -y -qq --no-install-recommends \
    build-essential dpkg-dev pkgconf python3 curl ca-certificates patch \
    libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev \
    libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev \
    libaio-dev iproute2 iptables nftables >/dev/null || die "apt-get install of build deps failed"

# 3. Fetch and unpack the source package (patches applied by dpkg-source).
if [ -n "${WORKDIR:-}" ]; then
    mkdir -p "$WORKDIR"; CLEAN=
else
    WORKDIR=$(mktemp -d /tmp/build-criu.XXXXXX); CLEAN=$WORKDIR
fi
trap '[ -n "$CLEAN" ] && rm -rf "$CLEAN"' EXIT
cd "$WORKDIR"
if ! ls -d criu-*/ >/dev/null 2>&1; then
    say "fetching source package criu/$SUITE"
    # URIs and SHA256s first: apt omits files that already lie in the directory.
    uris=$(apt-get source --print-uris -qq "criu/$SUITE") || die "no criu source package in $SUITE"
    if ! apt-get source -qq "criu/$SUITE" >apt-source.log 2>&1; then
        # The mirror seen here serves the upstream tarball (*.orig.tar.*) but answers 404
        # for some .dsc/.debian.tar.xz files. The orig tarball is all `make criu` needs;
        # its SHA256 comes from the signed Sources index (apt-get source --print-uris).
        sed -n 's/^E: /  /p' apt-source.log >&2
        say "apt-get source failed; falling back to the verified upstream (orig) tarball"
        line=$(printf '%s\n' "$uris" | grep "\.orig\.tar\." | head -n1)
        [ -n "$line" ] || die "no criu source package in $SUITE"
        url=$(printf '%s\n' "$line" | awk '{print $1}' | tr -d "'")
        file=$(printf '%s\n' "$line" | awk '{print $2}')
        sha=$(printf '%s\n' "$line" | sed -n 's/.*SHA256:\([0-9a-f]*\).*/\1/p')
        curl -fsS --retry 3 -o "$file" "$url" || die "cannot download $url"
        echo "$sha  $file" | sha256sum -c --quiet - || die "$file: SHA256 mismatch"
        tar -xf "$file" || die "cannot unpack $file"
    fi
fi
SRC=$(ls -d criu-*/ | head -n1)
cd "$SRC"

patch_veth_userns() {
    # criu >= 4.2 restores the veth of a user-namespaced container through usernsd, from the
    # host netns. Without NLM_F_EXCL, RTM_NEWLINK there means "create or change": the kernel
    # finds the host's own device with the same ifindex/name and answers EOPNOTSUPP.
    f=criu/net.c
    grep -q 'restore_one_veth_userns' "$f" || { say "no usernsd veth path in $f: no patch"; return 0; }
    grep -q 'corral: NLM_F_EXCL' "$f" && return 0
    sed -i '/Restoring netdev %s idx %d via usernsd/i\
\treq.h.nlmsg_flags |= NLM_F_EXCL; /* corral: NLM_F_EXCL, create only, never change a host device */' "$f"
    grep -q 'corral: NLM_F_EXCL' "$f" || die "could not patch $f (restore_one_veth_userns changed?)"
    say "patched $f: NLM_F_EXCL on the usernsd veth request"
}
EXTRA=
if [ "$PATCH" = 1 ]; then
    patch_veth_userns
    EXTRA="GITID=v$(basename "$SRC" | sed 's/^criu-//')-$MARK"
fi
say "building $(basename "$SRC") with make -j$JOBS"

# 4. Build only criu itself (no docs: `make criu` does not touch Documentation/).
# Debian's own flags for the binary are not needed; CRIU's Makefile sets its own.
make -j"$JOBS" $EXTRA criu >build.log 2>&1 || { tail -n 30 build.log >&2; die "make failed (see above)"; }
install -D -m 0755 criu/criu "$PREFIX/sbin/criu"
hash -r 2>/dev/null || true

END=$(date +%s)
say "installed $PREFIX/sbin/criu: $("$PREFIX/sbin/criu" --version | head -n1)"
if "$PREFIX/sbin/criu" check; then
    say "criu check passed"
else
    say "WARNING: criu check failed on this kernel (see above)"
    say "took $((END - START)) s"
    exit 1
fi
say "took $((END - START)) s"
