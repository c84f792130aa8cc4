#!/bin/sh
# Create, or update, one least-privilege user of the production topology
# (definitions.production.json, which holds no users: docs/deploying.md says why).
#
#     printf '%s' "$PASSWORD" | deploy/rabbitmq/users.sh ROLE [USER]
#
# The password comes on standard input, never on a command line (where `ps` would show it).
# Run it again to change a password: it is idempotent. RABBITMQ_VHOST (default /) is the
# vhost the topology lives in; RABBITMQCTL (default rabbitmqctl) runs rabbitmqctl, e.g.
# RABBITMQCTL="kubectl exec -i -n rabbitmq rabbitmq-server-0 -- rabbitmqctl".
#
# ROLE        permissions in the vhost: configure / write / read
# gateway     ^$ / the task exchanges (publish; passive declares need no permission) / ^$
# images      ^$ / ^$ / images.queue (consume, get, ack, reject: dead letters are the
#             operators' to look at and replay)
# videos      ^$ / ^$ / videos.queue
#
# USER defaults to task-gateway for the gateway, image-generation and video-generation for
# the consumers (the service names of their task keys).
set -eu

usage() {
    echo "usage: printf '%s' \"\$PASSWORD\" | $0 gateway|images|videos [USER]" >&2
    exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case $1 in
    gateway) user=task-gateway write='^(images|videos)\.tasks$' read='^$' ;;
    images) user=image-generation write='^$' read='^images\.queue$' ;;
    videos) user=video-generation write='^$' read='^videos\.queue$' ;;
    *) echo "$0: unknown ROLE '$1' (gateway, images or videos)" >&2; usage ;;
esac
user=${2:-$user}
vhost=${RABBITMQ_VHOST:-/}
ctl=${RABBITMQCTL:-rabbitmqctl}

password=$(cat)
if [ -z "$password" ]; then
    echo "$0: no password on standard input for user '$user'" >&2
    exit 1
fi

# `list_users` prints one "name<TAB>[tags]" line per user.
if $ctl -q list_users --no-table-headers | cut -f1 | grep -qxF -- "$user"; then
    printf '%s' "$password" | $ctl -q change_password -- "$user" >/dev/null
else
    printf '%s' "$password" | $ctl -q add_user -- "$user" >/dev/null
fi
# No configure permission for anyone: the definitions create the topology, nobody else.
$ctl -q set_permissions -p "$vhost" -- "$user" '^$' "$write" "$read"
echo "$user: configure '^\$' write '$write' read '$read' in vhost '$vhost'"
