# Bootstrap's decision logic, sourced by scripts/bootstrap and by its test
# (scripts/tests/bootstrap-plan), which runs it against a throwaway dpkg and apt state.
#
# The project needs commands and files, not package names: a package may be "installed" and
# still lack the command (a removed alternative, a half-configured package), and a package may
# have been removed by apt while resolving an unrelated install. So bootstrap checks each NEED
# below, installs the package of every missing one, and verifies all of them afterwards.
#
# Overridable for the test: DPKG_ADMINDIR (dpkg's database directory) and APT_OPTS (an array of
# `-o Key=Value` options pointing apt at another state).

# need (a command name, or an absolute path for a file) and the Debian package providing it.
BOOTSTRAP_NEEDS=(
  # build
  "cc build-essential" "make build-essential" "pkg-config pkg-config" "musl-gcc musl-tools"
  "file file" "cpio cpio" "zstd zstd" "depmod kmod"
  # the static e2fsprogs and dropbear of the initramfs (scripts/build-static-tools): musl-gcc
  # above, the kernel's headers, and what unpacks and patches Debian's source tarballs
  "/usr/include/linux/fs.h linux-libc-dev" "patch patch" "bzip2 bzip2" "ar binutils"
  "readelf binutils" "strip binutils"
  # the initramfs codec benchmark (scripts/bench-initrd-codec)
  "lz4 lz4" "xz xz-utils" "gzip gzip"
  # the µCernVM kernel (kernel-config/build-custom-kernel): Debian's kernel sources and what
  # building them needs
  "/usr/src/linux-source-6.1.tar.xz linux-source-6.1" "bc bc" "bison bison" "flex flex"
  "perl perl" "/usr/include/libelf.h libelf-dev" "/usr/include/openssl/ssl.h libssl-dev"
  # images
  "xorriso xorriso" "/usr/lib/ISOLINUX/isolinux.bin isolinux" "/usr/lib/ISOLINUX/isohdpfx.bin isolinux"
  "syslinux syslinux" "/usr/lib/syslinux/modules/bios/ldlinux.c32 syslinux-common"
  "/usr/lib/syslinux/mbr/mbr.bin syslinux-common" "isohybrid syslinux-utils" "extlinux extlinux"
  "genisoimage genisoimage" "mkfs.vfat dosfstools" "mcopy mtools"
  # boot and disks
  "qemu-system-x86_64 qemu-system-x86" "qemu-img qemu-utils" "/bin/busybox busybox-static"
  # (the host's e2fsprogs make and inspect test disks; the initramfs has its own, static)
  "mke2fs e2fsprogs" "e2fsck e2fsprogs" "tune2fs e2fsprogs" "sfdisk fdisk" "losetup util-linux"
  # CernVM-FS client tests
  "fusermount3 fuse3" "getfattr attr" "openssl openssl" "python3 python3" "squid squid"
  "socat socat" "curl curl" "ip iproute2" "/etc/ssl/certs/ca-certificates.crt ca-certificates"
  # publisher benchmark and the Debian demo OS; logins into it (debian_demo, bench-boot)
  "debootstrap debootstrap" "ssh openssh-client" "ssh-keygen openssh-client"
  # accounts test of os-context (useradd --prefix on a scratch /etc)
  "useradd passwd" "groupadd passwd" "usermod passwd"
  # network and contextualization tests (DHCP server in a network namespace)
  "dnsmasq dnsmasq-base"
  # CernVM-FS client benchmark: a real keep-alive HTTP server
  "nginx nginx-light"
  # cernvm-launch: ssh into the machines; the test OS's sshd (Debian's dropbear, with its
  # libraries: the initramfs has its own, static); the libvirt backend and its test
  # (a libvirtd session daemon of an unprivileged user, started by the test through setpriv)
  "ssh openssh-client" "ssh-keygen openssh-client" "/usr/sbin/dropbear dropbear-bin"
  "libvirtd libvirt-daemon-system" "virsh libvirt-clients" "virt-xml-validate libvirt-clients"
  "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so libvirt-daemon-driver-qemu"
  "xmllint libxml2-utils" "setpriv util-linux" "sha256sum coreutils"
)

DPKG_ADMINDIR=${DPKG_ADMINDIR:-/var/lib/dpkg}
if ! declare -p APT_OPTS >/dev/null 2>&1; then APT_OPTS=(); fi

# True when NEED (a command or an absolute path) is present.
need_present() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Prints "need package" for every need that is missing.
missing_needs() {
  local entry need
  for entry in "${BOOTSTRAP_NEEDS[@]}"; do
    need=${entry%% *}
    need_present "$need" || echo "$entry"
  done
}

# Prints the installed version of PACKAGE, or nothing.
installed_version() {
  dpkg-query --admindir="$DPKG_ADMINDIR" -W -f='${Status}\t${Version}\n' "$1" 2>/dev/null |
    awk -F'\t' '$1 == "install ok installed" { print $2 }'
}

# Prints "package version" for each installed package built from source package SOURCE.
installed_from_source() {
  dpkg-query --admindir="$DPKG_ADMINDIR" -W -f='${Status}\t${Package}\t${source:Package}\t${Version}\n' 2>/dev/null |
    awk -F'\t' -v src="$1" '$1 == "install ok installed" && $3 == src { print $2, $4 }'
}

# Prints the versions of PACKAGE that some configured source offers (not the dpkg status
# alone), best first.
available_versions() {
  apt-cache "${APT_OPTS[@]}" madison "$1" 2>/dev/null | awk -F' [|] ' '{ gsub(/ /, "", $2); print $2 }'
}

# Prints the version apt would install for PACKAGE if nothing were installed: the best version
# a configured source offers (apt's own "candidate" is the installed version when that is
# newer, e.g. a backport from outside the configured sources).
offered_version() {
  available_versions "$1" | head -n 1
}

# Prints the source package of PACKAGE at VERSION.
source_of() {
  apt-cache "${APT_OPTS[@]}" show "$1=$2" 2>/dev/null |
    awk '/^Source:/ { print $2; found = 1; exit } END { if (!found) print "'"$1"'" }'
}

# The version of the source a binary version was built from, to compare the binaries of one
# source: a binNMU suffix ("+b2") rebuilds one architecture's binaries from the same source,
# and binaries of one source may carry different epochs ("1:").
source_version() {
  local v=${1#*:}
  printf '%s\n' "${v%+b[0-9]*}"
}

# Prints the version of PACKAGE that a configured source offers built from source version
# SOURCE_VERSION, or nothing.
offered_at_source_version() {
  local v
  for v in $(available_versions "$1"); do
    if [ "$(source_version "$v")" = "$2" ]; then
      echo "$v"
      return 0
    fi
  done
  return 0
}

# Prints the install arguments (package or package=version) for the packages given, so that
# every package built from the same source as an installed one ends at the same version as
# that one. Binaries of one source depend on each other's exact versions (qemu-system-x86 on
# qemu-system-common; qemu-utils breaks an older qemu-system-common), and apt resolves a
# mismatch by removing the installed package. Preferred: the new package at the installed
# sibling's version, when a configured source offers it. Otherwise: the installed siblings
# move to the version the new package comes in (a downgrade of an image's backport), which
# keeps their commands. Fails when neither is possible.
plan_install() {
  local pkg offered src sibling sibling_version want match args=() seen=" "
  for pkg in "$@"; do
    case "$seen" in *" $pkg "*) continue ;; esac
    seen="$seen$pkg "
    offered=$(offered_version "$pkg")
    if [ -z "$offered" ]; then
      echo "bootstrap: no configured apt source offers $pkg" >&2
      return 1
    fi
    src=$(source_of "$pkg" "$offered")
    want=$offered
    local siblings
    siblings=$(installed_from_source "$src" | grep -v "^$pkg " || true)
    if [ -n "$siblings" ]; then
      # The installed siblings' version, if the new package is offered at it.
      while read -r sibling sibling_version; do
        match=$(offered_at_source_version "$pkg" "$(source_version "$sibling_version")")
        if [ -n "$match" ]; then want=$match; break; fi
      done <<<"$siblings"
      args+=("$pkg=$want")
      # Siblings at another source version follow the new package.
      while read -r sibling sibling_version; do
        if [ "$(source_version "$sibling_version")" = "$(source_version "$want")" ]; then continue; fi
        case "$seen" in *" $sibling "*) continue ;; esac
        match=$(offered_at_source_version "$sibling" "$(source_version "$want")")
        if [ -z "$match" ]; then
          echo "bootstrap: $pkg $want needs $sibling at the same version, but $sibling $sibling_version is installed and no configured source offers $sibling $(source_version "$want")" >&2
          return 1
        fi
        echo "bootstrap: $sibling $sibling_version -> $match, to match $pkg (same source package $src)" >&2
        seen="$seen$sibling "
        args+=("$sibling=$match")
      done <<<"$siblings"
    else
      args+=("$pkg")
    fi
  done
  printf '%s\n' "${args[@]}"
}
