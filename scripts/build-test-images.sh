#!/usr/bin/env bash
# Builds the Docker images the testcontainers-based tests start:
#
#   sockgate-test/postgres:15  PostgreSQL 15 from Debian bookworm
#   sockgate-test/postgres:17  PostgreSQL 17 from Debian trixie
#   sockgate-test/redis:7      redis-server from Debian bookworm
#
# No container registry is reachable from our machines or CI, only Debian's
# package archive, so each root filesystem is made by mmdebstrap from that
# archive and turned into an image with `docker import`.
#
# Usage: scripts/build-test-images.sh [--force] [--verify]
#   --force   rebuild images even if their tag already exists
#   --verify  afterwards start each image and talk to it (psql, redis-cli)
#
# Needs root (mmdebstrap's root mode and dockerd). Starts dockerd itself when
# no daemon answers, and leaves it running for the tests that follow.
set -euo pipefail

force=0
verify=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --verify) verify=1 ;;
    -h | --help)
      sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "build-test-images: must run as root (mmdebstrap root mode, dockerd)" >&2
  exit 1
fi

say() { printf '[test-images] %s\n' "$*"; }
die() {
  printf '[test-images] error: %s\n' "$*" >&2
  exit 1
}

# Debian's packages only: apt-get update costs ~10 s, so pay it only when
# something is actually missing.
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
# A docker *client* may exist on its own (/usr/local/bin/docker here), so the
# daemon binary is what tells whether the engine is installed.
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ "$verify" -eq 1 ]; then
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}"
fi
# trixie's Release file is signed with keys that only newer
# debian-archive-keyring versions of bookworm carry.
if [ ! -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ]; then
  say "debian-archive-keyring lacks the trixie keys; upgrading it"
  apt_install debian-archive-keyring
  [ -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ] ||
    die "no trixie key in /usr/share/keyrings after upgrading debian-archive-keyring"
fi

# --- the Docker daemon ----------------------------------------------------
# There is no systemd on these machines, so nobody else starts dockerd.
if ! docker info >/dev/null 2>&1; then
  say "no Docker daemon answers; starting dockerd (log: /var/log/dockerd.log)"
  # setsid + nohup: the daemon must outlive this script (the tests use it).
  nohup setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || {
    tail -n 30 /var/log/dockerd.log >&2 || true
    die "dockerd did not come up within 60 s"
  }
fi

# --- where Debian's archive is --------------------------------------------
# Prints "URI SUITE" for every enabled deb source of this machine, from both
# the deb822 (*.sources) and one-line (*.list) formats.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush(   i, j, nu, ns, u, s) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
          nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
            if (u[i] != "" && s[j] != "") print u[i], s[j]
        }
        types = uris = suites = enabled = ""; key = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (key == "uris") uris = uris " " $0; else if (key == "suites") suites = suites " " $0; next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = val
      }
      END { flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '
      $1 != "deb" { next }
      {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if (i + 1 <= NF) print $(i), $(i + 1)
      }
    ' "$f"
  done
}

host_sources=$(apt_sources)
# The main archive is whatever carries a release suite; the security archive
# is a separate tree with its own suite names (bookworm-security, ...).
mirror=${DEBIAN_MIRROR:-$(awk '$2 !~ /-security$/ { print $1; exit }' <<<"$host_sources")}
security_mirror=${DEBIAN_SECURITY_MIRROR:-$(awk '$2 ~ /-security$/ { print $1; exit }' <<<"$host_sources")}
[ -n "$mirror" ] || die "found no Debian archive in /etc/apt/sources.list{,.d/*}; set DEBIAN_MIRROR"
say "Debian archive: $mirror${security_mirror:+ (security: $security_mirror)}"

# --- the entrypoints ------------------------------------------------------
# Mirrors what testcontainers-modules' postgres module relies on in the
# official image: it waits for "database system is ready to accept
# connections" once on stderr and once on stdout (src/postgres/mod.rs,
# ready_conditions). In the official image the stdout one comes from the
# temporary init server (pg_ctl redirects the postmaster's stderr to its own
# stdout when it has no -l log file) and the stderr one from the real server,
# so the stderr condition is only met once initialisation is over and the
# server listens on TCP. This script keeps that order of events.
read -r -d '' pg_entrypoint <<'ENTRYPOINT' || true
#!/bin/bash
# Entrypoint of sockgate's PostgreSQL test images (see
# scripts/build-test-images.sh): the subset of the official postgres image's
# docker-entrypoint.sh that the tests rely on.
set -Eeo pipefail

# `docker run IMAGE -c fsync=off` (what testcontainers-modules passes) means
# options for the server.
if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi
# `postgres --version` and friends need no database.
for arg; do
  case "$arg" in
    '-?' | --help | --describe-config | -V | --version) exec "$@" ;;
  esac
done

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  chmod 3777 /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  # PostgreSQL refuses to run as root.
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi
export HOME=/var/lib/postgresql
mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || :

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:=}"
: "${POSTGRES_HOST_AUTH_METHOD:=}"
export POSTGRES_USER POSTGRES_DB POSTGRES_PASSWORD

# Over the Unix socket, whatever PGHOST the container was given.
psql_local() {
  PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}
# Same name as in the official image, for init scripts that are sourced.
docker_process_sql() {
  psql_local --dbname "$POSTGRES_DB" "$@"
}

if [ -s "$PGDATA/PG_VERSION" ]; then
  echo
  echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
  echo
  exec "$@"
fi

if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
  cat >&2 <<'EOE'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser, or use POSTGRES_HOST_AUTH_METHOD=trust to allow all
       connections without a password (not for production).
EOE
  exit 1
fi

# POSTGRES_INITDB_ARGS is a string of options, split like the official image
# does. The password goes through a pipe, never the command line; the
# process substitution must sit on initdb's own command line, since its fd is
# closed once the command it belongs to is done.
if [ -n "$POSTGRES_PASSWORD" ]; then
  eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"${POSTGRES_INITDB_ARGS:-}"
else
  eval 'initdb --username="$POSTGRES_USER" '"${POSTGRES_INITDB_ARGS:-}"
fi

auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
{
  echo
  echo "host all all all $auth"
} >>"$PGDATA/pg_hba.conf"
echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

server_args=("$@")
# Temporary server for the init steps: socket only, so no client can reach
# it over TCP before initialisation is done. Its log goes to stdout (pg_ctl
# without -l sends the server's stderr there), the real server's to stderr.
shift # "postgres"
set -- "$@" -c listen_addresses='' -p 5432
PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
export PGPASSWORD="$POSTGRES_PASSWORD"

if [ "$POSTGRES_DB" != postgres ]; then
  exists=$(psql_local --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
  if [ -z "$exists" ]; then
    psql_local --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db" ;'
  fi
fi

echo
for f in /docker-entrypoint-initdb.d/*; do
  [ -e "$f" ] || continue
  case "$f" in
    *.sh)
      if [ -x "$f" ]; then
        echo "$0: running $f"
        "$f"
      else
        echo "$0: sourcing $f"
        # shellcheck disable=SC1090
        . "$f"
      fi
      ;;
    *.sql) echo "$0: running $f"; docker_process_sql -f "$f"; echo ;;
    *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | docker_process_sql; echo ;;
    *.sql.xz) echo "$0: running $f"; xz -dc "$f" | docker_process_sql; echo ;;
    *.sql.zst) echo "$0: running $f"; zstd -dc "$f" | docker_process_sql; echo ;;
    *) echo "$0: ignoring $f" ;;
  esac
done
unset PGPASSWORD

PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
echo
echo 'PostgreSQL init process complete; ready for start up.'
echo

exec "${server_args[@]}"
ENTRYPOINT

# testcontainers-modules' redis module waits for "Ready to accept
# connections" on stdout; redis-server logs to stdout when it is given no
# logfile, which is the case here.
read -r -d '' redis_entrypoint <<'ENTRYPOINT' || true
#!/bin/bash
# Entrypoint of sockgate's Redis test image (see scripts/build-test-images.sh).
set -Eeo pipefail

conf=()
case "${1:-}" in
  redis-server) shift ;;
  '' | -*) ;;
  *)
    # A config file must come first on redis-server's command line;
    # anything else is a command of its own (sh, redis-cli, ...).
    if [ -f "$1" ]; then
      conf=("$1")
      shift
    else
      exec "$@"
    fi
    ;;
esac

if [ "$(id -u)" = 0 ]; then
  mkdir -p /data
  chown redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "${BASH_SOURCE[0]}" "${conf[@]}" "$@"
fi

cd /data
# Throwaway test server: reachable from the host through Docker's port
# mapping, nothing kept on disk.
exec redis-server "${conf[@]}" --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --dir /data "$@"
ENTRYPOINT

# --- building -------------------------------------------------------------
workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/sockgate-test-images.XXXXXX")
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do
    docker rm -f -v "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$workdir"
}
trap cleanup EXIT

printf '%s\n' "$pg_entrypoint" >"$workdir/pg-entrypoint.sh"
printf '%s\n' "$redis_entrypoint" >"$workdir/redis-entrypoint.sh"
bash -n "$workdir/pg-entrypoint.sh"
bash -n "$workdir/redis-entrypoint.sh"

# mmdebstrap customize hook: runs on the host, after all packages are
# installed, with the root filesystem's path as $1.
cat >"$workdir/cleanup-hook.sh" <<'HOOK'
set -eu
root=$1
# postgresql-common's postinst creates a "main" cluster that the images
# never use: their entrypoint runs initdb into $PGDATA.
rm -rf "$root"/etc/postgresql/* "$root"/var/lib/postgresql/* "$root"/var/log/postgresql/*
# LLVM (and libz3, there for LLVM alone) only serve PostgreSQL's optional
# JIT and are its largest dependencies; without llvmjit.so the server simply
# runs with JIT unavailable. dpkg warns about the broken dependency.
llvm=$(chroot "$root" dpkg-query -W -f '${Package}\n' 'libllvm*' 'libz3-*' 2>/dev/null || true)
if [ -n "$llvm" ]; then
  chroot "$root" dpkg --purge --force-depends $llvm >/dev/null 2>&1
  rm -rf "$root"/usr/lib/postgresql/*/lib/llvmjit* "$root"/usr/lib/postgresql/*/lib/bitcode
fi
mkdir -p "$root/docker-entrypoint-initdb.d"
# What dpkg's path-excludes did not catch (files made by maintainer scripts,
# the build's own logs and caches).
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/log/*.log "$root"/var/log/apt
HOOK

# essential variant: the Essential:yes packages plus ours, without apt (the
# images never install anything). No man pages, docs or translations.
mmdebstrap_opts=(
  --variant=essential
  # bookworm's init-system-helpers depends on "usrmerge | usr-is-merged";
  # apt would take usrmerge and with it all of perl (~45 MB in the Redis
  # image). This hook sets up merged /usr itself and installs usr-is-merged.
  --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
)

declare -A build_secs=()

# build_image TAG SUITE PACKAGES ENTRYPOINT_FILE [docker import --change ...]
build_image() {
  local tag=$1 suite=$2 packages=$3 entrypoint=$4
  shift 4
  local changes=("$@")

  # The label records what the image was built from, so an image left on a
  # reused machine by an older version of this script is rebuilt rather than
  # silently tested against.
  local recipe
  recipe=$(
    {
      printf '%s\n' "$suite" "$packages" "${changes[@]}" "${mmdebstrap_opts[@]}"
      cat "$entrypoint"
      cat "$workdir/cleanup-hook.sh"
    } | sha256sum | cut -c1-16
  )
  if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    local have
    have=$(docker image inspect -f '{{index .Config.Labels "org.sockgate.recipe"}}' "$tag" 2>/dev/null || true)
    if [ "$have" = "$recipe" ]; then
      say "$tag exists (recipe $recipe); skipped"
      return 0
    fi
    say "$tag exists but was built from another recipe (${have:-none}, now $recipe); rebuilding"
  fi

  local sources=("deb $mirror $suite main" "deb $mirror $suite-updates main")
  if [ -n "$security_mirror" ]; then
    sources+=("deb $security_mirror $suite-security main")
  fi

  local started=$SECONDS tarball="$workdir/${tag//[\/:]/_}.tar"
  say "building $tag from $suite: $packages"
  # A tarball first, not a pipe into docker import, so a failed build can
  # never leave a half-made image tagged.
  # Its few hundred lines of progress only matter when it fails.
  local log="$workdir/mmdebstrap-${tag//[\/:]/_}.log"
  if ! mmdebstrap "${mmdebstrap_opts[@]}" \
    --include="$packages" \
    --customize-hook="install -D -m 0755 '$entrypoint' \"\$1/usr/local/bin/docker-entrypoint.sh\"" \
    --customize-hook="bash '$workdir/cleanup-hook.sh' \"\$1\"" \
    "$suite" "$tarball" "${sources[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "mmdebstrap failed for $tag (last 40 lines above)"
  fi

  local change_args=() c
  for c in "${changes[@]}" "LABEL org.sockgate.recipe=$recipe"; do
    change_args+=(--change "$c")
  done
  local old_id
  old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  docker import "${change_args[@]}" --message "mmdebstrap $suite: $packages" "$tarball" "$tag" >/dev/null
  rm -f "$tarball"
  # The image the tag pointed at is now nameless; each rebuild would leave
  # another ~200 MB behind on machines that are reused. Still in use by a
  # container, it stays.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  build_secs[$tag]=$((SECONDS - started))
  say "built $tag in ${build_secs[$tag]} s"
}

# No STOPSIGNAL SIGINT as in the official image: `docker import` of Debian's
# docker.io 20.10 rejects it. `docker stop` then asks for a smart shutdown;
# testcontainers removes its containers by force anyway.
pg_changes() {
  local major=$1
  printf '%s\n' \
    "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    'ENV LANG=C.UTF-8' \
    'ENV PGDATA=/var/lib/postgresql/data' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    'CMD ["postgres"]' \
    'EXPOSE 5432'
}
mapfile -t pg15_changes < <(pg_changes 15)
mapfile -t pg17_changes < <(pg_changes 17)
redis_changes=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
  'CMD ["redis-server"]'
  'EXPOSE 6379'
)

total_started=$SECONDS
build_image sockgate-test/postgres:15 bookworm postgresql-15 "$workdir/pg-entrypoint.sh" "${pg15_changes[@]}"
build_image sockgate-test/postgres:17 trixie postgresql-17 "$workdir/pg-entrypoint.sh" "${pg17_changes[@]}"
build_image sockgate-test/redis:7 bookworm redis-server "$workdir/redis-entrypoint.sh" "${redis_changes[@]}"
say "images done in $((SECONDS - total_started)) s"

# --- verification ---------------------------------------------------------
# wait_log CONTAINER STREAM MESSAGE COUNT: like testcontainers' log wait
# strategy, counts MESSAGE on one stream of `docker logs`.
wait_log() {
  local c=$1 stream=$2 msg=$3 count=$4 n
  for _ in $(seq 1 120); do
    if [ "$stream" = stdout ]; then
      n=$(docker logs "$c" 2>/dev/null | grep -cF -- "$msg" || true)
    else
      n=$(docker logs "$c" 2>&1 >/dev/null | grep -cF -- "$msg" || true)
    fi
    [ "$n" -ge "$count" ] && return 0
    if [ "$(docker inspect -f '{{.State.Running}}' "$c")" != true ]; then
      docker logs "$c" >&2 || true
      die "container $c exited before printing '$msg' on $stream"
    fi
    sleep 0.5
  done
  docker logs "$c" >&2 || true
  die "container $c: '$msg' not seen $count time(s) on $stream within 60 s"
}

# start_container NAME INIT_DIR|'' docker-run-args... -- IMAGE [CMD...]
# create + copy + start, the order testcontainers uses for copied files.
start_container() {
  local name=$1 init_dir=$2
  shift 2
  docker rm -f -v "$name" >/dev/null 2>&1 || true
  docker create --name "$name" "$@" >/dev/null
  containers+=("$name")
  if [ -n "$init_dir" ]; then
    docker cp "$init_dir/." "$name:/docker-entrypoint-initdb.d/"
  fi
  docker start "$name" >/dev/null
}

host_port() { docker port "$1" "$2/tcp" | awk -F: 'NR == 1 { print $NF }'; }

verify_pg() {
  local tag=$1 major=$2 name="sockgate-verify-pg$2" port out
  local init="$workdir/init-$major"
  mkdir -p "$init"
  cat >"$init/01-schema.sql" <<'SQL'
CREATE TABLE from_init_sql (id int PRIMARY KEY);
INSERT INTO from_init_sql VALUES (42);
SQL
  # Sourced (not executable), like most init scripts in the wild.
  cat >"$init/02-more.sh" <<'SH'
docker_process_sql <<<'CREATE TABLE from_init_sh (ok boolean); INSERT INTO from_init_sh VALUES (true);'
SH

  say "verify $tag: trust auth, init scripts, -c fsync=off as testcontainers passes it"
  start_container "$name" "$init" -e POSTGRES_PASSWORD=postgres -e POSTGRES_HOST_AUTH_METHOD=trust \
    -p 127.0.0.1::5432 "$tag" -c fsync=off
  # The module's two conditions, in its order.
  wait_log "$name" stderr 'database system is ready to accept connections' 1
  wait_log "$name" stdout 'database system is ready to accept connections' 1
  port=$(host_port "$name" 5432)
  # Straight after the stderr line, as testcontainers would connect.
  psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -A -t -v ON_ERROR_STOP=1 \
    -c 'select version()' -c 'show fsync' -c 'select id from from_init_sql' -c 'select ok from from_init_sh' |
    while IFS= read -r line; do say "  $tag: $line"; done
  out=$(psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -A -t -c 'select id from from_init_sql')
  [ "$out" = 42 ] || die "$tag: init .sql did not run"
  out=$(psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -A -t -c 'select ok from from_init_sh')
  [ "$out" = t ] || die "$tag: init .sh did not run"
  out=$(psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -A -t -c 'show fsync')
  [ "$out" = off ] || die "$tag: -c fsync=off was not passed to the server"
  out=$(docker exec "$name" stat -c %U /proc/1)
  say "  $tag: PID 1 runs as $out"
  docker rm -f -v "$name" >/dev/null

  say "verify $tag: password auth, custom user and database"
  start_container "$name" '' -e POSTGRES_USER=sock -e POSTGRES_PASSWORD=s3cret -e POSTGRES_DB=app \
    -p 127.0.0.1::5432 "$tag"
  wait_log "$name" stderr 'database system is ready to accept connections' 1
  wait_log "$name" stdout 'database system is ready to accept connections' 1
  port=$(host_port "$name" 5432)
  out=$(PGPASSWORD=s3cret psql -h 127.0.0.1 -p "$port" -U sock -d app -X -A -t \
    -c "select current_user || '@' || current_database()" 2>&1 || true)
  [ "$out" = sock@app ] || die "$tag: password login as sock to app failed: $out"
  if PGPASSWORD=wrong psql -h 127.0.0.1 -p "$port" -U sock -d app -X -c 'select 1' >/dev/null 2>&1; then
    die "$tag: a wrong password was accepted"
  fi
  say "  $tag: sock@app with password ok, wrong password refused"
  docker rm -f -v "$name" >/dev/null
}

verify_redis() {
  local tag=$1 name=sockgate-verify-redis port out
  say "verify $tag"
  start_container "$name" '' -p 127.0.0.1::6379 "$tag"
  wait_log "$name" stdout 'Ready to accept connections' 1
  port=$(host_port "$name" 6379)
  out=$(redis-cli -h 127.0.0.1 -p "$port" ping)
  [ "$out" = PONG ] || die "$tag: ping answered '$out'"
  say "  $tag: $(redis-cli -h 127.0.0.1 -p "$port" info server | tr -d '\r' | grep '^redis_version:'), ping -> $out"
  docker rm -f -v "$name" >/dev/null
}

if [ "$verify" -eq 1 ]; then
  verify_started=$SECONDS
  verify_pg sockgate-test/postgres:15 15
  verify_pg sockgate-test/postgres:17 17
  verify_redis sockgate-test/redis:7
  say "verified in $((SECONDS - verify_started)) s"
fi

say "images:"
for tag in sockgate-test/postgres:15 sockgate-test/postgres:17 sockgate-test/redis:7; do
  size=$(docker image inspect -f '{{.Size}}' "$tag")
  printf '[test-images]   %-28s %6d MB\n' "$tag" "$((size / 1000 / 1000))"
done
