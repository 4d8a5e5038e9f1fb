#!/usr/bin/env bash
# Entrypoint of docker-compose.yml's `mongo` container (mounted read-only, run with bash).
#
# mongod refuses to run a replica set with authentication unless the members share a key file
# (--keyFile). This writes one before the image's own entrypoint (docker-entrypoint.sh) starts
# mongod: at the path the command gives to --keyFile (a tmpfs in docker-compose.yml), random,
# mode 400 and owned by the image's `mongodb` user (uid/gid 999), which mongod runs as. The key is
# generated here at every container start, so it is never committed and never on disk: a
# single-member set has no other member that must hold the same key.
set -Eeuo pipefail

key_file=
previous=
for argument in "$@"; do
	case "$argument" in
		--keyFile=*) key_file="${argument#--keyFile=}" ;;
	esac
	if [ "$previous" = "--keyFile" ]; then
		key_file="$argument"
	fi
	previous="$argument"
done
if [ -z "$key_file" ]; then
	echo >&2 "$0: the command has no --keyFile <path>: nowhere to write the replica set's key"
	exit 1
fi

if [ ! -s "$key_file" ]; then
	# 756 random bytes, base64 on one line: 1008 characters of the alphabet mongod accepts (6 to 1024).
	(umask 077 && head -c 756 /dev/urandom | base64 -w 0 > "$key_file")
fi
if [ "$(id -u)" = 0 ]; then
	chown mongodb:mongodb "$key_file"
fi
chmod 400 "$key_file"

exec docker-entrypoint.sh "$@"
