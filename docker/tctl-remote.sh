#!/bin/sh
# `tctl` on a box that is not the auth host (the lab's client container): adds
# --auth-server=$TCTL_AUTH_SERVER and -i $TCTL_IDENTITY, then runs the real tctl.
# Put this directory first in PATH to use it; without those variables it is plain tctl.
if [ -n "${TCTL_AUTH_SERVER:-}" ] && [ -n "${TCTL_IDENTITY:-}" ]; then
  exec /usr/local/bin/tctl --auth-server="$TCTL_AUTH_SERVER" -i "$TCTL_IDENTITY" "$@"
fi
exec /usr/local/bin/tctl "$@"
