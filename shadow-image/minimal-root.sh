#!/bin/sh
# Assemble the shadow image's root filesystem in $1, inside the Debian build
# stage where openssh-server, dnsmasq-base, haproxy and busybox are
# installed: the daemons, the shared libraries they load (their ldd closure,
# with the dynamic loader), bash for the entrypoint, busybox with the few
# tools the entrypoint and ktpy's in-pod commands call, and the account and
# name-service files. Nothing else of Debian ships: no apt, dpkg, perl or
# coreutils.
set -eu

root=$1
binaries="/usr/sbin/sshd /usr/bin/ssh-keygen /usr/sbin/dnsmasq /usr/sbin/haproxy
    /usr/bin/bash /usr/bin/busybox"
# bash is the one shell: the entrypoint's (busybox ash 1.35's `wait -n`
# does not return when a child exits non-zero or by a signal, which is the
# very event the entrypoint waits for) and kt's login shell, through which
# sshd runs exec requests. busybox gives the tools: cat chmod cut grep head
# id mkdir rm for the entrypoint, sed and cat for ktpy's
# drop_other_connections (ktpy/tunnel/ssh.py), stat to look at the key
# copies in /tmp/ktpy.
applets="cat chmod cut grep head id mkdir rm sed stat"

# Copy a file (following symlinks) to the same place in the new root, with
# the directory symlinks of merged /usr resolved.
place() {
    dir=$(readlink -f "$(dirname "$1")")
    mkdir -p "$root$dir"
    cp -L "$1" "$root$dir/$(basename "$1")"
}

mkdir -p "$root"
cd "$root"
# Debian's merged /usr links (/bin -> usr/bin, /lib64 -> usr/lib64, ...):
# ELF interpreters and scripts name /lib64/... and /bin/sh.
for link in /bin /sbin /lib /lib32 /lib64 /libx32; do
    if [ -L "$link" ]; then cp -P "$link" "$root/"; fi
done
mkdir -p usr/bin usr/sbin usr/local/bin etc dev proc sys run home/kt
install -d -m 1777 tmp

for b in $binaries; do place "$b"; done
# "lib.so => /path (addr)" for libraries, "/path (addr)" for the loader.
ldd $binaries |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' |
    sort -u |
    while read -r lib; do place "$lib"; done
cp -a /etc/ld.so.conf /etc/ld.so.conf.d etc/
ldconfig -X -r "$root"

for a in $applets; do ln -s busybox "usr/bin/$a"; done
ln -s bash usr/bin/sh

# The account: uid/gid 10001 "kt", password "*" (no password, but not locked:
# with PAM off, sshd refuses even key logins for a locked "!" account).
cat >etc/passwd <<'END'
root:x:0:0:root:/root:/usr/sbin/nologin
kt:x:10001:10001::/home/kt:/bin/bash
END
cat >etc/group <<'END'
root:x:0:
kt:x:10001:
END
cat >etc/shadow <<'END'
root:*:20000:0:99999:7:::
kt:*:20000:0:99999:7:::
END
chmod 0644 etc/passwd etc/group
chmod 0600 etc/shadow
cat >etc/nsswitch.conf <<'END'
passwd: files
group: files
shadow: files
hosts: files dns
END
chown 10001:10001 home/kt
chmod 0700 home/kt
# Nothing in the pod may gain privileges: no setuid/setgid file, so that
# allowPrivilegeEscalation=false is not the only guard. (No host key either:
# nothing of /etc/ssh is copied; each session brings its own.)
find "$root" -xdev -type f -perm /6000 -exec chmod ug-s {} +
