#!/bin/bash
# The image's base, Debian 12 built from Debian's packages: no image registry is needed
# (none is reachable on the project's machines, so FROM debian:12 cannot be pulled).
# mmdebstrap makes a minimal rootfs (minbase: Essential packages and apt) with the
# suite's updates and security sources; `podman import` makes it an image. The
# Containerfile installs everything else, so a base made once serves every build.
# The merged-usr hook makes the /usr merge itself, as debootstrap does: without it,
# mmdebstrap installs the usrmerge package, and with it perl (55 MB).
#
#   deploy/container/build-base.sh [TAG]      (as root; FORCE=1 rebuilds an existing base)
#
# Docs, man pages and translations are left out, as Debian's -slim images do; the
# dpkg setting stays in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so the
# Containerfile's installs leave them out too. Copyright files are kept.
set -euo pipefail

tag=${1:-localhost/tcpstate-tracer-base:bookworm}
podman=${PODMAN:-podman}
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [ "${FORCE:-0}" != 1 ] && $podman image exists "$tag"; then
	echo "image-base: $tag exists (FORCE=1 rebuilds it)"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=minbase --format=tar --quiet \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--aptopt='Acquire::Languages "none"' \
	bookworm "$work/rootfs.tar" \
	"deb $mirror bookworm main" \
	"deb $mirror bookworm-updates main" \
	"deb $security bookworm-security main"
$podman import --quiet \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/bin/bash"]' \
	--message "mmdebstrap --variant=minbase bookworm" \
	"$work/rootfs.tar" "$tag" >/dev/null
echo "image-base: built $tag ($(du -h "$work/rootfs.tar" | cut -f1) rootfs)"
