#!/bin/sh
# Installs postern on Linux without a .deb: binaries, hardened systemd units, man pages,
# shell completions, the system users and their private folders. POSIX sh.
#
#   install.sh [--bin-dir DIR] [--root DIR] [--uninstall [--purge]]
#
# --bin-dir  where postern and/or postern-relay are (default: target/release beside this
#            script's folder); whichever is there is installed.
# --root     install under DIR instead of / (staging; no users, owners or systemctl then).
# --uninstall removes programs, units, man pages and completions (a program the .deb put
#            in /usr/bin, its unit, config and state, are left alone); the config
#            (/etc/postern*) and state (/var/lib/postern*) stay unless --purge is given too.
# A program the .deb put in /usr/bin is not installed over: remove the package first.
# Where systemd runs (not with --root), installing over a running unit (an upgrade) restarts it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=$here/../target/release
root=
action=install
purge=0
usage() { echo "usage: $0 [--bin-dir DIR] [--root DIR] [--uninstall [--purge]]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) [ $# -ge 2 ] || usage; bin_dir=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=1; shift ;;
        *) usage ;;
    esac
done
if [ "$purge" = 1 ] && [ "$action" != uninstall ]; then
    echo "--purge goes with --uninstall (it deletes the config and state)" >&2
    usage
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    echo "run as root (or stage with --root DIR)" >&2
    exit 1
fi

prefix=$root/usr/local
systemd_running() { [ -z "$root" ] && [ -d /run/systemd/system ]; }
say() { echo "postern install: $*"; }
# Whether the .deb (or another package) put the program in /usr/bin.
packaged() { [ -e "$root/usr/bin/$1" ]; }
# Whether this script left anything of the program in /usr/local.
ours() { [ -e "$prefix/bin/$1" ] || [ -d "$prefix/share/doc/$1" ]; }

# program, unit, user, config dir, state dir
components="postern:postern-agent:postern:/etc/postern:/var/lib/postern
postern-relay:postern-relay:postern-relay:/etc/postern-relay:/var/lib/postern-relay"

uninstall_one() {
    program=$1 unit=$2 etc=$3 state=$4
    # A program the .deb installed (in /usr/bin) is not this script's: a relay from the
    # .deb beside an agent installed here must not be stopped, nor its host key and agent
    # registry purged. (With no trace anywhere, an earlier --uninstall's, --purge goes on.)
    if packaged "$program" && ! ours "$program"; then
        say "$program is installed in /usr/bin, not by this script (the .deb?): left as it is; remove it with the tool that installed it"
        return 0
    fi
    # Both (installed here over the .deb by a version before 2026-12-07): only this
    # script's files go; the unit name, config and state are the package's too.
    if packaged "$program"; then
        remove_files "$program" "$unit"
        say "removed this script's $program; the one in /usr/bin (the .deb?), its config and state stay: systemctl restart $unit to run it again"
        return 0
    fi
    if systemd_running; then systemctl disable --now "$unit.service" 2>/dev/null || true; fi
    remove_files "$program" "$unit"
    if [ "$purge" = 1 ]; then
        rm -rf "$root$etc" "$root$state"
        say "purged $etc and $state"
    fi
    say "removed $program"
}

remove_files() {
    program=$1 unit=$2
    rm -f "$prefix/bin/$program" "$root/etc/systemd/system/$unit.service" \
        "$prefix/share/man/man1/$program.1" \
        "$prefix/share/bash-completion/completions/$program" \
        "$prefix/share/zsh/site-functions/_$program" \
        "$prefix/share/fish/vendor_completions.d/$program.fish"
    rm -rf "$prefix/share/doc/$program"
}

install_one() {
    program=$1 unit=$2 user=$3 etc=$4 state=$5
    install -d "$prefix/bin" "$root/etc/systemd/system" "$prefix/share/man/man1" \
        "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" \
        "$prefix/share/fish/vendor_completions.d" "$prefix/share/doc/$program"
    # Binaries already where they go (--bin-dir /usr/local/bin): install refuses to copy a
    # file onto itself, and the units and users would never be set up.
    if [ "$bin_dir/$program" -ef "$prefix/bin/$program" ]; then
        chmod 0755 "$prefix/bin/$program"
    else
        install -m 0755 "$bin_dir/$program" "$prefix/bin/$program"
    fi
    # The packaged unit names /usr/bin; this install lives in /usr/local/bin.
    unit_file=$root/etc/systemd/system/$unit.service
    # What this script installed last, to tell an untouched unit from the admin's.
    installed=$prefix/share/doc/$program/$unit.service
    sed "s|/usr/bin/$program |/usr/local/bin/$program |" "$here/systemd/$unit.service" \
        > "$unit_file.new"
    chmod 0644 "$unit_file.new"
    if [ ! -e "$unit_file" ] || cmp -s "$unit_file" "$unit_file.new" ||
        { [ -e "$installed" ] && cmp -s "$unit_file" "$installed"; } ||
        { [ ! -e "$installed" ] &&
            [ "$(grep '^ExecStart=' "$unit_file")" = "$(grep '^ExecStart=' "$unit_file.new")" ]; }; then
        cp "$unit_file.new" "$installed"
        mv "$unit_file.new" "$unit_file"
    else
        # Edited since (an Environment= line, `postern service install --config …`), or
        # the admin's own: theirs. Replaced, the edits would be gone without a word.
        mv "$unit_file.new" "$installed"
        say "kept $unit_file, which was changed after it was installed (it runs $(grep '^ExecStart=' "$unit_file" | cut -d= -f2-)); this version's unit is $installed: compare, or put changes in a drop-in (systemctl edit $unit)"
    fi
    # Not the umask's modes: under a umask of 077 nobody but root could read them.
    for page in "man/man1/$program.1:man" "bash-completion/completions/$program:completions bash" \
        "zsh/site-functions/_$program:completions zsh" \
        "fish/vendor_completions.d/$program.fish:completions fish"; do
        # shellcheck disable=SC2086 # the command's words
        "$bin_dir/$program" ${page#*:} > "$prefix/share/${page%%:*}.new"
        chmod 0644 "$prefix/share/${page%%:*}.new"
        mv "$prefix/share/${page%%:*}.new" "$prefix/share/${page%%:*}"
    done
    example=$here/agent.example.toml
    [ "$program" = postern-relay ] && example=$here/relay.example.toml
    install -m 0644 "$example" "$prefix/share/doc/$program/"
    if [ -z "$root" ] && ! getent passwd "$user" >/dev/null; then
        useradd --system --user-group --home-dir "$state" --no-create-home \
            --shell /usr/sbin/nologin "$user"
        say "created system user $user"
    fi
    owner=
    [ -z "$root" ] && owner="-o $user -g $user"
    # shellcheck disable=SC2086 # $owner is two words or none
    install -d $owner -m 0700 "$root$state"
    if [ "$program" = postern ]; then
        # shellcheck disable=SC2086
        install -d $owner -m 0700 "$root$etc"
    else
        install -d -m 0750 "$root$etc"
        # An existing relay.toml is the admin's: never replaced.
        [ -e "$root$etc/relay.toml" ] || install -m 0640 "$example" "$root$etc/relay.toml"
        [ -z "$root" ] && chgrp "$user" "$root$etc" "$root$etc/relay.toml"
    fi
    say "installed $program ($unit.service)"
}

if [ "$action" = install ] && [ ! -x "$bin_dir/postern" ] && [ ! -x "$bin_dir/postern-relay" ]; then
    echo "neither postern nor postern-relay in $bin_dir" >&2
    exit 1
fi
echo "$components" | while IFS=: read -r program unit user etc state; do
    case $action in
        install)
            [ -x "$bin_dir/$program" ] || continue
            # Its unit here would shadow the package's under the same name, and a later
            # --uninstall --purge would take the package's config and state for its own.
            if packaged "$program" && ! ours "$program"; then
                say "$program is installed in /usr/bin (the .deb?): not installed over it; remove that package first to run this build"
                continue
            fi
            install_one "$program" "$unit" "$user" "$etc" "$state" ;;
        uninstall) uninstall_one "$program" "$unit" "$etc" "$state" ;;
    esac
done
if ! systemd_running; then
    if [ -z "$root" ] && [ "$action" = install ]; then
        say "systemd does not run here: nothing starts the programs; start them with this system's service manager, as the units in /etc/systemd/system say: their ExecStart= as their User=, with XDG_RUNTIME_DIR=/run and a /run/postern owned by postern (mode 0750), where \`postern status\` and \`reload\` run as root look for the agent"
    fi
    exit 0
fi
systemctl daemon-reload
[ "$action" = install ] || exit 0
# Over a running unit (an upgrade) the old program would keep running: try-restart starts
# the new one and leaves a stopped unit stopped; one not running waits to be configured.
echo "$components" | {
    failed=0
    while IFS=: read -r program unit _ etc _; do
        [ -x "$bin_dir/$program" ] || continue
        packaged "$program" && ! ours "$program" && continue
        if ! systemctl is-active --quiet "$unit.service"; then
            say "next: configure $etc, then systemctl enable --now $unit"
        elif systemctl try-restart "$unit.service" && systemctl is-active --quiet "$unit.service"; then
            say "restarted $unit.service"
        else
            echo "postern install: restarting $unit.service failed: systemctl status $unit" >&2
            failed=1
        fi
    done
    exit "$failed"
}
