#!/bin/sh
# Install tek on a bench workstation without the Debian package: the binary, the systemd unit,
# the udev rules, the system user, the module list and the documentation. Idempotent: running it
# again replaces tek's own files with the new ones and never touches /etc/tek/agent.toml.
#
#   cargo build --release -p agent
#   sudo packaging/install.sh                       # into /usr/local, then reload udev/systemd
#   packaging/install.sh --destdir /tmp/root        # stage into a directory (no system changes)
#   packaging/install.sh --dry-run                  # print what would be done
#   sudo packaging/install.sh --bay-rules /etc/tek/agent.toml   # (re)generate the bay rules
#
# Options:
#   --prefix DIR     where the binary and the vendor files go (default /usr/local; /usr also works)
#   --destdir DIR    stage everything under DIR (like make's DESTDIR); skips all system commands
#   --bin FILE       the tek binary (default: target/release/tek, or $CARGO_TARGET_DIR/release/tek)
#   --dry-run        print the actions, change nothing
#   --bay-rules CONF only generate /etc/udev/rules.d/69-tek-bays.rules from CONF and reload udev
#
# Layout (PREFIX=/usr/local): PREFIX/bin/tek, PREFIX/lib/systemd/system/tek-agent.service,
# PREFIX/lib/udev/rules.d/70-tek-bench.rules, PREFIX/lib/sysusers.d/tek.conf,
# PREFIX/lib/modules-load.d/tek.conf, PREFIX/share/tek/tek-bay-rules, PREFIX/share/doc/tek/*,
# PREFIX/share/man/man1/tek*.1, the bash, zsh and fish completions under PREFIX/share,
# and the directories /etc/tek and /etc/tek/trusted-keys. systemd and udev read all of these
# PREFIX=/usr/local paths on Debian 12.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=/usr/local
destdir=
bin=
dry=0
bay_rules=

die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift 2 ;;
        --bin) [ $# -ge 2 ] || die "--bin needs a file"; bin=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --bay-rules) [ $# -ge 2 ] || die "--bay-rules needs an agent.toml"; bay_rules=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
done
case $prefix in /*) ;; *) die "--prefix must be absolute: $prefix" ;; esac
if [ -n "$destdir" ]; then
    case $destdir in /*) ;; *) destdir=$(pwd)/$destdir ;; esac
fi

run() {
    if [ "$dry" = 1 ]; then echo "would run: $*"; else "$@"; fi
}
# install_file MODE SRC DEST: copy atomically (temp file + rename), so a running agent or udevd
# never reads a half-written file.
install_file() {
    mode=$1 src=$2 dst=$destdir$3
    [ -f "$src" ] || die "missing $src"
    if [ "$dry" = 1 ]; then echo "would install $src -> $dst (mode $mode)"; return; fi
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst.tek-new"
    chmod "$mode" "$dst.tek-new"
    mv -f "$dst.tek-new" "$dst"
    echo "installed $dst"
}
# Commands that change the running system: only for a real install as root.
system_changes() { [ -z "$destdir" ] && [ "$(id -u)" = 0 ]; }
reload_udev() {
    if system_changes && [ -d /run/udev ] && command -v udevadm >/dev/null; then
        run udevadm control --reload
        run udevadm trigger --subsystem-match=block --action=change
    fi
}

if [ -n "$bay_rules" ]; then
    out=$destdir/etc/udev/rules.d/69-tek-bays.rules
    if [ "$dry" = 1 ]; then
        echo "would write $out from $bay_rules:"
        sh "$here/tek-bay-rules" "$bay_rules"
    else
        mkdir -p "$(dirname "$out")"
        sh "$here/tek-bay-rules" "$bay_rules" > "$out.tek-new"
        mv -f "$out.tek-new" "$out"
        echo "wrote $out"
    fi
    reload_udev
    exit 0
fi

if [ -z "$bin" ]; then
    bin=${CARGO_TARGET_DIR:-$repo/target}/release/tek
fi
[ -x "$bin" ] || die "no tek binary at $bin: run 'cargo build --release -p agent' or pass --bin FILE"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# The unit names its binary; point it at this prefix.
sed "s#^ExecStart=/usr/bin/tek #ExecStart=$prefix/bin/tek #" "$repo/systemd/tek-agent.service" \
    > "$tmp/tek-agent.service"
grep -q "^ExecStart=$prefix/bin/tek " "$tmp/tek-agent.service" || die "could not set ExecStart"

install_file 0755 "$bin" "$prefix/bin/tek"
install_file 0644 "$tmp/tek-agent.service" "$prefix/lib/systemd/system/tek-agent.service"
install_file 0644 "$repo/udev/70-tek-bench.rules" "$prefix/lib/udev/rules.d/70-tek-bench.rules"
install_file 0644 "$repo/systemd/tek.sysusers" "$prefix/lib/sysusers.d/tek.conf"
install_file 0644 "$repo/systemd/tek.modules-load" "$prefix/lib/modules-load.d/tek.conf"
install_file 0755 "$here/tek-bay-rules" "$prefix/share/tek/tek-bay-rules"
install_file 0644 "$here/agent.toml.example" "$prefix/share/doc/tek/agent.toml.example"
install_file 0644 "$repo/udev/69-tek-bays.rules.example" "$prefix/share/doc/tek/69-tek-bays.rules.example"
install_file 0644 "$repo/README.md" "$prefix/share/doc/tek/README.md"
# Shell completions and man pages, generated by the binary being installed (so they match it).
mkdir -p "$tmp/man"
"$bin" completions bash > "$tmp/tek.bash"
"$bin" completions zsh > "$tmp/_tek"
"$bin" completions fish > "$tmp/tek.fish"
"$bin" man --dir "$tmp/man" 2>/dev/null
install_file 0644 "$tmp/tek.bash" "$prefix/share/bash-completion/completions/tek"
install_file 0644 "$tmp/_tek" "$prefix/share/zsh/vendor-completions/_tek"
install_file 0644 "$tmp/tek.fish" "$prefix/share/fish/vendor_completions.d/tek.fish"
for page in "$tmp"/man/*.1; do
    install_file 0644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done
for d in /etc/tek /etc/tek/trusted-keys; do
    if [ "$dry" = 1 ]; then echo "would create $destdir$d (mode 0755)"; else mkdir -p "$destdir$d"; chmod 0755 "$destdir$d"; fi
done

if system_changes; then
    # The user and group `tek` (agent identity; socket group for technicians).
    command -v systemd-sysusers >/dev/null && run systemd-sysusers "$prefix/lib/sysusers.d/tek.conf"
    # Make sure the block majors the unit's DeviceAllow= names exist now, not only after a reboot.
    command -v modprobe >/dev/null && run modprobe -a loop sd_mod || true
    reload_udev
    if [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
    fi
fi

if [ ! -e "$destdir/etc/tek/agent.toml" ]; then
    cat <<EOF

Next steps:
  1. Write /etc/tek/agent.toml (start from $prefix/share/doc/tek/agent.toml.example; find each
     bay's port_path with 'tek bays --discover'). The agent does not start without it.
  2. $prefix/share/tek/tek-bay-rules /etc/tek/agent.toml > /etc/udev/rules.d/69-tek-bays.rules
     (or: packaging/install.sh --bay-rules /etc/tek/agent.toml), then 'udevadm control --reload'.
  3. Put the image signers' public keys in /etc/tek/trusted-keys/.
  4. systemctl enable --now tek-agent.service; add technicians: usermod -aG tek NAME
EOF
fi
