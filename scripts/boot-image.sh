#!/usr/bin/env bash
# Builds what the boot test boots, from Debian's packages only (nothing prebuilt is committed,
# nothing comes from elsewhere):
#
#   scripts/boot-image.sh base OUT
#       OUT/bootx64.efi  GRUB (grub-efi-amd64-bin, grub-mkstandalone) with tests/boot/grub.cfg
#       OUT/ovmf.fd      the UEFI firmware QEMU starts (ovmf)
#       OUT/slot-V.img   a slot's ext4 image: /boot/vmlinuz (linux-image-*-cloud-amd64) and
#                        /boot/initrd.img (busybox-static, tests/boot/init, the virtio and vfat
#                        modules, the C libraries the agent links), for V in 1.0 2.0 2.1 (good),
#                        3.0 (its health check fails), 4.0 (its kernel panics: no init)
#   scripts/boot-image.sh disk OUT STAGING DISK
#       DISK: a GPT disk: 1 EFI system partition (GRUB, grubenv selecting slot a), 2 slot A
#       (slot-1.0.img), 3 slot B (empty), 4 data (ext4 made from the STAGING directory).
#
# `base` is cached: OUT/recipe holds the hash of this script and tests/boot/, and a matching
# OUT is kept as it is. Prerequisites are installed when missing (root, Debian 12).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
boot="$here/tests/boot"

need() {
  local missing=()
  for tool_pkg in "$@"; do
    command -v "${tool_pkg%%:*}" >/dev/null 2>&1 || missing+=("${tool_pkg#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

recipe() {
  cat "$0" "$boot"/* | sha256sum | cut -d' ' -f1
}

# The packages, downloaded and unpacked (not installed: no kernel or GRUB lands on the host).
unpack() {
  local out=$1 root=$1/root
  mkdir -p "$out/debs" "$root"
  local kernel
  kernel=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
  (cd "$out/debs" && apt-get download "$kernel" busybox-static grub-efi-amd64-bin ovmf 2>/dev/null)
  for d in "$out"/debs/*.deb; do dpkg-deb -x "$d" "$root"; done
}

# Module name -> its dependencies' names (from the module's own modinfo section).
deps_of() {
  strings "$1" | sed -n 's/^depends=//p' | tr ',' ' '
}

# Prints the modules to load, dependencies first, for the names given.
module_order() {
  local dir=$1; shift
  local -A seen=()
  visit() {
    local name=${1//-/_} path
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    path=$(find "$dir" -name "$name.ko" -o -name "${1//_/-}.ko" | head -n1)
    [ -n "$path" ] || return 0 # built in
    for d in $(deps_of "$path"); do visit "$d"; done
    echo "${path#"$dir"/}"
  }
  for m in "$@"; do visit "$m"; done
}

initrd() {
  local root=$1 version=$2 kind=$3 out=$4 tree
  tree=$(mktemp -d)
  mkdir -p "$tree"/{bin,etc,proc,sys,dev,lib/modules,lib64,lib/x86_64-linux-gnu}
  cp "$root/bin/busybox" "$tree/bin/busybox"
  if [ "$kind" != panic ]; then
    cp "$boot/init" "$tree/init"
  fi
  cp "$boot/health-check" "$tree/bin/health-check"
  echo "$version" >"$tree/etc/version"
  [ "$kind" = bad-health ] && touch "$tree/etc/bad-health"
  local moddir
  moddir=$(echo "$root"/lib/modules/*)
  module_order "$moddir" virtio_pci virtio_blk virtio_net vfat nls_cp437 nls_ascii >"$tree/etc/modules-order"
  while read -r m; do
    mkdir -p "$tree/lib/modules/$(dirname "$m")"
    cp "$moddir/$m" "$tree/lib/modules/$m"
  done <"$tree/etc/modules-order"
  # The C libraries a Debian-built agent links (the agent itself is on the data partition).
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$tree/lib/x86_64-linux-gnu/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$tree/lib64/"
  (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
  rm -rf "$tree"
}

slot() {
  local root=$1 version=$2 kind=$3 img=$4 fs
  fs=$(mktemp -d)
  mkdir -p "$fs/boot"
  cp "$root"/boot/vmlinuz-* "$fs/boot/vmlinuz"
  initrd "$root" "$version" "$kind" "$fs/boot/initrd.img"
  rm -f "$img"
  mkfs.ext4 -q -L "slot-$version" -d "$fs" "$img" 24M >/dev/null
  rm -rf "$fs"
}

base() {
  local out=$1 want
  want=$(recipe)
  if [ -f "$out/recipe" ] && [ "$(cat "$out/recipe")" = "$want" ]; then
    return 0
  fi
  need qemu-system-x86_64:qemu-system-x86 mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk \
    mkfs.ext4:e2fsprogs cpio:cpio strings:binutils grub-mkstandalone:grub-common
  rm -rf "$out"
  mkdir -p "$out"
  unpack "$out"
  local root=$out/root
  grub-mkstandalone -O x86_64-efi -d "$root/usr/lib/grub/x86_64-efi" -o "$out/bootx64.efi" \
    --locales= --fonts= --themes= "boot/grub/grub.cfg=$boot/grub.cfg"
  cp "$root/usr/share/ovmf/OVMF.fd" "$out/ovmf.fd"
  slot "$root" 1.0 good "$out/slot-1.0.img"
  slot "$root" 2.0 good "$out/slot-2.0.img"
  slot "$root" 2.1 good "$out/slot-2.1.img"
  slot "$root" 3.0 bad-health "$out/slot-3.0.img"
  slot "$root" 4.0 panic "$out/slot-4.0.img"
  rm -rf "$out/debs" "$out/root"
  echo "$want" >"$out/recipe"
}

# Partition sizes, MiB: EFI, slot A, slot B, data.
ESP=16 SLOT=32 DATA=160

disk() {
  local out=$1 staging=$2 img=$3 tmp
  tmp=$(mktemp -d)
  mkfs.vfat -C -n EFI "$tmp/esp.img" $((ESP * 1024)) >/dev/null
  mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
  mcopy -i "$tmp/esp.img" "$out/bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  grub-editenv "$tmp/grubenv" create
  grub-editenv "$tmp/grubenv" set boot_slot=a upgrade_available=0 bootcount=0
  mcopy -i "$tmp/esp.img" "$tmp/grubenv" ::/grubenv
  mkfs.ext4 -q -L data -d "$staging" "$tmp/data.img" ${DATA}M >/dev/null
  rm -f "$img"
  truncate -s $((1 + ESP + 2 * SLOT + DATA + 1))M "$img"
  sfdisk -q "$img" <<EOF
label: gpt
start=1MiB, size=${ESP}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=efi
size=${SLOT}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=slot-a
size=${SLOT}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=slot-b
size=${DATA}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOF
  dd if="$tmp/esp.img" of="$img" bs=1M seek=1 conv=notrunc status=none
  dd if="$out/slot-1.0.img" of="$img" bs=1M seek=$((1 + ESP)) conv=notrunc status=none
  dd if="$tmp/data.img" of="$img" bs=1M seek=$((1 + ESP + 2 * SLOT)) conv=notrunc status=none
  rm -rf "$tmp"
}

case "${1:-}" in
  base) base "$2" ;;
  disk) disk "$2" "$3" "$4" ;;
  *)
    echo "usage: $0 base OUT | disk OUT STAGING DISK" >&2
    exit 2
    ;;
esac
