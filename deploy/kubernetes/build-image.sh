#!/usr/bin/env bash
# Builds the two images the manifest beside this script runs, from this
# machine's own files (no base image is pulled from anywhere), and pushes them:
#
#   REGISTRY/hangar:TAG           the `hangar` binary, the shared libraries `ldd`
#                                 says it loads, CA certificates, and a static
#                                 busybox (for the pod's preStop `sleep`)
#   REGISTRY/hangar-postgres:TAG  Debian's PostgreSQL 15 (the files of the
#                                 postgresql-15 package installed here, their
#                                 libraries, time zones) and a start script that
#                                 makes the cluster at the first start
#
# Usage: deploy/kubernetes/build-image.sh REGISTRY [TAG]
#   REGISTRY  where to push, e.g. registry.example.com/hangar or 127.0.0.1:5000
#   TAG       default: the first 12 hex digits of the binary's SHA-256 (so an
#             unchanged binary pushes nothing new)
# Environment:
#   HANGAR_BINARY  the binary to put in the image; default the release build's
#                  (under $CARGO_TARGET_DIR, else target/), built with
#                  `cargo build --release -p hangar` when missing
#
# Needs: docker (build and push), ldd, busybox-static, ca-certificates and
# postgresql-15 (Debian 12 packages). Prints the two image references, one per
# line, as `hangar=REF` and `postgres=REF`.
set -euo pipefail

registry=${1:?usage: $0 REGISTRY [TAG]}
registry=${registry%/}
repo=$(cd "$(dirname "$0")/../.." && pwd)
binary=${HANGAR_BINARY:-${CARGO_TARGET_DIR:-$repo/target}/release/hangar}
if [ ! -x "$binary" ]; then
    [ -z "${HANGAR_BINARY:-}" ] || { echo "HANGAR_BINARY=$binary is not an executable" >&2; exit 1; }
    (cd "$repo" && cargo build --release -p hangar --bin hangar) >&2
fi
tag=${2:-$(sha256sum "$binary" | cut -c1-12)}
pg_version=15
pg_bin=/usr/lib/postgresql/$pg_version/bin
busybox=/bin/busybox
for needed in docker ldd "$busybox" "$pg_bin/postgres" /etc/ssl/certs/ca-certificates.crt; do
    command -v "$needed" >/dev/null 2>&1 || [ -e "$needed" ] \
        || { echo "missing: $needed (Debian: docker.io, busybox-static, ca-certificates, postgresql-$pg_version)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies each file to the same path under root $1, following symlinks.
put() {
    local root=$1; shift
    for file in "$@"; do
        mkdir -p "$root$(dirname "$file")"
        cp -L "$file" "$root$file"
    done
}

# Copies every shared library `ldd` says the ELF files $2... load (at the
# path the loader asks for) under root $1.
put_libraries() {
    local root=$1; shift
    local libraries
    libraries=$(for file in "$@"; do
        ldd "$file" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
    done | sort -u)
    # shellcheck disable=SC2086 # one path per word
    [ -z "$libraries" ] || put "$root" $libraries
}

# Builds $2 from the rootfs at $1 with the Dockerfile lines on stdin, and pushes it.
build_and_push() {
    local root=$1 image=$2
    { echo "FROM scratch"; echo "COPY rootfs/ /"; cat; } >"$(dirname "$root")/Dockerfile"
    docker build -q -t "$image" "$(dirname "$root")" >/dev/null
    docker push "$image" >/dev/null
}

# --- hangar
root=$work/hangar/rootfs
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/tmp" "$root/data" "$root/etc"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/hangar"
put_libraries "$root" "$binary"
put "$root" /etc/ssl/certs/ca-certificates.crt
cp "$busybox" "$root/bin/busybox"
printf 'root:x:0:0:root:/root:/bin/busybox\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
build_and_push "$root" "$registry/hangar:$tag" <<'EOF'
ENV HANGAR_LISTEN=0.0.0.0:7070 HANGAR_DATA_DIR=/data
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/hangar"]
CMD ["serve"]
EOF

# --- PostgreSQL
pg_tag=$(dpkg-query -W -f='${Version}' "postgresql-$pg_version" | tr -c 'A-Za-z0-9_.\n-' '_')
root=$work/postgres/rootfs
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/var/lib/postgresql/data" "$root/usr/share"
# COPY makes everything root's: the data dir's parent is writable by all (as
# /tmp is) for a container without a volume there; a mounted volume's owner
# comes from the pod's fsGroup.
chmod 1777 "$root/tmp" "$root/var/lib/postgresql/data"
put "$root" "$pg_bin"/postgres "$pg_bin"/initdb "$pg_bin"/pg_isready
put_libraries "$root" "$pg_bin"/postgres "$pg_bin"/initdb "$pg_bin"/pg_isready
# Extensions' and procedural languages' modules (plpgsql is made by initdb),
# without the JIT's bitcode.
mkdir -p "$root/usr/lib/postgresql/$pg_version/lib"
find "/usr/lib/postgresql/$pg_version/lib" -maxdepth 1 -name '*.so' -print0 \
    | xargs -0 -I{} cp {} "$root/usr/lib/postgresql/$pg_version/lib/"
modules=$(find "$root/usr/lib/postgresql/$pg_version/lib" -name '*.so' -printf "/usr/lib/postgresql/$pg_version/lib/%f\n")
# shellcheck disable=SC2086
put_libraries "$root" $modules
mkdir -p "$root/usr/share/postgresql"
cp -a "/usr/share/postgresql/$pg_version" "$root/usr/share/postgresql/"
rm -rf "$root/usr/share/postgresql/$pg_version/man"
cp -a /usr/share/zoneinfo "$root/usr/share/zoneinfo"
cp "$busybox" "$root/bin/busybox"
# initdb runs the server through /bin/sh; the start script needs a few tools.
for tool in sh mkdir chmod rm cat mktemp; do ln -s busybox "$root/bin/$tool"; done
# initdb and postgres look their user up.
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
cat >"$root/bin/hangar-postgres" <<EOF
#!/bin/sh
# Starts PostgreSQL $pg_version on \$PGDATA. At the first start (no PG_VERSION
# there) it makes the cluster: superuser \$POSTGRES_USER (default hangar) with
# password \$POSTGRES_PASSWORD, password logins over TCP only, and a database
# named after the user.
set -eu
: "\${PGDATA:=/var/lib/postgresql/data/pgdata}"
: "\${POSTGRES_USER:=hangar}"
bin=$pg_bin
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
    if [ -z "\${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD must be set for the first start" >&2
        exit 64
    fi
    mkdir -p "\$PGDATA"
    chmod 700 "\$PGDATA"
    pwfile=\$(mktemp)
    printf '%s\n' "\$POSTGRES_PASSWORD" >"\$pwfile"
    "\$bin/initdb" -D "\$PGDATA" -U "\$POSTGRES_USER" --pwfile="\$pwfile" -E UTF8 \\
        --locale=C --auth-local=trust --auth-host=scram-sha-256
    rm -f "\$pwfile"
    printf 'host all all all scram-sha-256\n' >>"\$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \\"\$POSTGRES_USER\\"" | "\$bin/postgres" --single -D "\$PGDATA" postgres >/dev/null
fi
exec "\$bin/postgres" -D "\$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
EOF
chmod 755 "$root/bin/hangar-postgres"
# SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for
# Hangar's pooled connections to close, past the pod's grace period.
build_and_push "$root" "$registry/hangar-postgres:$pg_tag" <<'EOF'
ENV PATH=/bin
USER 999:999
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/hangar-postgres"]
EOF

echo "hangar=$registry/hangar:$tag"
echo "postgres=$registry/hangar-postgres:$pg_tag"
