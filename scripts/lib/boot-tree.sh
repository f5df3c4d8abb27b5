# Shared by scripts/build-iso and scripts/build-hdd (sourced, not run): the option parsing for
# the boot parameters and the boot medium tree of spec §14.1 with the menus of spec §14.2.
#
# Options understood by parse_boot_option (defaults in brackets):
#   --kernel KERNEL     custom: the µCernVM kernel (kernel-config/build-custom-kernel, built or
#                       taken from its cache), everything built in; debian: Debian's cloud
#                       kernel (kernel-config/fetch-debian-kernel) with modules in the
#                       initramfs; or a kernel image file [custom]
#   --initrd FILE       initramfs [built by scripts/build-initrd for that kernel]
#   --modules DIR       lib/modules/<release> for scripts/build-initrd [with a kernel file]
#   --cern-keys DIR     passed to scripts/build-initrd
#   --branch NAME       the preset of spec §9.2 (init/src/config/branches.table: prod, testing,
#                       devel, sl7, slc4, slc5, aarch64, ...): repository, path, tag, servers
#                       and CDN [prod, as the original's default image cernvm4-micro]
#   --repo NAME         OS repository [the branch's]
#   --server LIST       Stratum-1 servers, comma-separated [the branch's]; switches the CDN off
#                       (as cvmfs_server in user data does), a later --cdn on again
#   --cdn LIST          CDN hosts or NONE [the branch's]
#   --path DIR          cernvm_path [the branch's]
#   --tag TAG           repository tag [the branch's]
#   (later options override earlier ones: `--branch sl7 --tag HEAD` changes the tag only)
#   --serial            serial-console variant (like the original's cloud images): `lastarg`
#                       replaced by console=ttyS0, no console=tty0
# The default variant shows the boot menu on the screen and on ttyS0 and starts the normal entry's
# parameters with `console=tty0 console=ttyS0` (the rest as the original's, ending in `lastarg`
# for the cloud variants to replace): kernel and boot messages on both, /dev/console (and so the
# login prompt) on the serial port, where cernvm-launch logs it and `console NAME` attaches.
#   --output FILE       image file [build/ucernvm.<version>.<format>]

kernel=custom initrd="" modules="" cern_keys="" output="" serial=0

die() { echo "${0##*/}: error: $*" >&2; exit 1; }
log() { echo "${0##*/}: $*" >&2; }

branch_table="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/init/src/config/branches.table"

# Sets repo, cernvm_path, tag, server and cdn from the preset of branch $1 (the same table the
# init reads for `cvmfs_branch`).
apply_branch() {
    local line
    line=$(awk -v b="$1" '!/^#/ && NF == 6 { n = split($1, names, ","); for (i = 1; i <= n; i++) if (names[i] == b) { print; exit } }' "$branch_table")
    if [[ -z "$line" ]]; then
        die "--branch $1: no such branch (known: $(awk '!/^#/ && NF == 6 { printf "%s%s", sep, $1; sep = "," }' "$branch_table" | tr ',' ' '))"
    fi
    read -r _ repo cernvm_path tag server cdn <<<"$line"
}
apply_branch prod

# Consumes one option from "$@"; sets `shift_by` to the number of words used (0: unknown).
parse_boot_option() {
    shift_by=2
    case "$1" in
    --kernel) kernel=${2:?$1 needs a value} ;;
    --initrd) initrd=${2:?$1 needs a value} ;;
    --modules) modules=${2:?$1 needs a value} ;;
    --cern-keys) cern_keys=${2:?$1 needs a value} ;;
    --branch) apply_branch "${2:?$1 needs a value}" ;;
    --repo) repo=${2:?$1 needs a value} ;;
    --server) server=${2:?$1 needs a value} cdn=NONE ;;
    --cdn) cdn=${2:?$1 needs a value} ;;
    --path) cernvm_path=${2:?$1 needs a value} ;;
    --tag) tag=${2:?$1 needs a value} ;;
    --output) output=${2:?$1 needs a value} ;;
    --serial) serial=1; shift_by=1 ;;
    *) shift_by=0 ;;
    esac
}

# Values end up on the kernel command line, split on white space by the init: no blanks, quotes
# or characters the boot loader configs treat specially.
check_boot_values() {
    local name value
    for name in repo server cdn cernvm_path tag; do
        value=${!name}
        [[ "$value" =~ ^[A-Za-z0-9._,\;:/@+-]+$ ]] || die "--${name/cernvm_/} $value: only letters, digits and ._,;:/@+- are allowed"
    done
}

# Sets version, kernel and initrd (building the initramfs if needed), and iso_budget: the
# largest ISO (in bytes) for that kernel.
resolve_inputs() {
    version=${UCERNVM_VERSION:-$(tr -d '[:space:]' <scripts/bootloader-version).cernvm.x86_64}
    release=${version%%.cernvm*}   # e.g. 2026.11-1
    menu_version=${release%%-*}    # e.g. 2026.11
    epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
    local args=()
    iso_budget=$((20 * 1024 * 1024))
    case "$kernel" in
    custom)
        kernel=$(kernel-config/build-custom-kernel)
        args=(--kernel custom)
        ;;
    debian)
        kernel=$(kernel-config/fetch-debian-kernel)
        args=(--kernel debian)
        ;;
    *)
        [[ -f "$kernel" ]] || die "--kernel $kernel: not custom, debian or a kernel image file"
        [[ -n "$modules" || -n "$initrd" ]] || die "--kernel FILE needs --modules (or --initrd) so the initramfs matches it"
        args=(--modules "$modules")
        ;;
    esac
    # The µCernVM kernel given as a file (scripts/build-images, the tests) has its budget too.
    [[ "$kernel" != */custom-kernel/*/vmlinuz ]] || iso_budget=12000000
    if [[ -z "$initrd" ]]; then
        [[ -n "$cern_keys" ]] && args+=(--cern-keys "$cern_keys")
        initrd=$(SOURCE_DATE_EPOCH=$epoch scripts/build-initrd "${args[@]}")
    fi
    [[ -f "$initrd" ]] || die "initramfs $initrd not found"
}

# Kernel parameters of spec §14.2 up to and including the repository tag.
common_params() {
    echo "root=first noresume crashkernel=1M@16M divider=10 selinux=0 consoleblank=0 log_buf_len=4M cernvm_path=$cernvm_path cvmfs_repos=$repo cvmfs_server=$server cvmfs_cdn=$cdn cvmfs_repository_tag=$tag"
}

normal_params() {
    if [[ $serial -eq 1 ]]; then
        echo "$(common_params) quiet systemd.show_status=1 loglevel=3 console=ttyS0"
    else
        echo "console=tty0 console=ttyS0 $(common_params) quiet systemd.show_status=1 loglevel=3 lastarg"
    fi
}

debug_params() {
    if [[ $serial -eq 1 ]]; then
        echo "$(common_params) cvmdebug console=ttyS0"
    else
        echo "$(common_params) cvmdebug console=ttyS0 console=tty0"
    fi
}

# syslinux/isolinux configuration: text menu (works on VGA and serial), normal entry default.
syslinux_cfg() {
    echo "SERIAL 0 115200"
    cat <<CFG
UI menu.c32
PROMPT 0
TIMEOUT 20
MENU TITLE Welcome to uCernVM
DEFAULT normal

LABEL normal
  MENU LABEL uCernVM $menu_version
  KERNEL /cernvm/vmlinuz.xz
  APPEND initrd=/cernvm/initrd.img $(normal_params)

LABEL debug
  MENU LABEL uCernVM $menu_version Debug
  KERNEL /cernvm/vmlinuz.xz
  APPEND initrd=/cernvm/initrd.img $(debug_params)
CFG
}

# GRUB legacy menu for PV-GRUB (spec §14.2): the normal parameters without consoleblank and lastarg.
grub_menu_lst() {
    local params
    params=$(normal_params | sed -e 's/^console=tty0 console=ttyS0 //' -e 's/ consoleblank=0//' -e 's/ lastarg$//')
    cat <<CFG
default 0
timeout 3
fallback 1

title uCernVM $menu_version
root (hd0)
kernel /cernvm/vmlinuz.xz $params
initrd /cernvm/initrd.img
CFG
}

# Writes the boot medium tree into directory $1 (spec §14.1); config dir `isolinux`.
make_boot_tree() {
    local dir=$1 f
    mkdir -p "$dir/isolinux" "$dir/cernvm" "$dir/boot/grub"
    for f in ldlinux.c32 menu.c32 libutil.c32 libcom32.c32; do
        cp /usr/lib/syslinux/modules/bios/$f "$dir/isolinux/" || die "$f not found (Debian package syslinux-common)"
    done
    syslinux_cfg >"$dir/isolinux/isolinux.cfg"
    cp "$dir/isolinux/isolinux.cfg" "$dir/isolinux/syslinux.cfg"
    grub_menu_lst >"$dir/boot/grub/menu.lst"
    cp "$kernel" "$dir/cernvm/vmlinuz.xz"
    cp "$initrd" "$dir/cernvm/initrd.img"
    : >"$dir/.ucernvm_boot_loader"
    echo "$repo at $tag, uCernVM $version" >"$dir/version"
    find "$dir" -exec touch -h -d "@$epoch" {} +
}

# Size breakdown of an image built from the tree in $1: kernel, initramfs, boot loader, total.
print_sizes() {
    local dir=$1 image=$2 budget=$3
    local k i l total
    k=$(stat -c %s "$dir/cernvm/vmlinuz.xz")
    i=$(stat -c %s "$dir/cernvm/initrd.img")
    l=$(du -cb "$dir/isolinux" "$dir/boot" | tail -n 1 | cut -f 1)
    total=$(stat -c %s "$image")
    {
        printf '%-28s %12s\n' "image part" "bytes"
        printf '%-28s %12d\n' "kernel (cernvm/vmlinuz.xz)" "$k"
        printf '%-28s %12d\n' "initramfs (cernvm/initrd.img)" "$i"
        printf '%-28s %12d\n' "boot loader and configs" "$l"
        printf '%-28s %12d\n' "file system and padding" $((total - k - i - l))
        printf '%-28s %12d  (%.2f MiB, budget %d bytes)\n' "$image" "$total" "$(awk -v t="$total" 'BEGIN { print t / 1048576 }')" "$budget"
    } >&2
    if [[ $total -gt $budget ]]; then
        log "warning: $image is larger than its budget of $budget bytes"
    fi
}

# <image>.sha256 next to the image: the `sha256sum` line "<hex>  <file name>" (spec §14.3; readers
# take the first 64 characters).
write_sha256() {
    local image=$1
    (cd "$(dirname "$image")" && sha256sum "$(basename "$image")") >"$image.sha256"
}
