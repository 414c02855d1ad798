#!/bin/sh
# The in-place roll's reprovision command, as a script: it logs its call, waits while the test
# holds `$HOOKS/hold`, then does what `$MODE` says to the node's machine, through kubectl and the
# simulated kubelet's `sim.kiln.dev/reboot-into` (a reboot: a new bootID, the bundle label set as
# kiln-firstboot sets it, NotReady for `READY_AFTER` ms):
# `reboot` into the target bundle; `rollback`: the target's kubelet failed and the node booted
# back into `$ROLLBACK_TO`; `hang`: it boots the target but never gets Ready; `relabel`: no
# reboot, only the label changes.
set -eu
echo "$KILN_NODE $KILN_TARGET_BUNDLE $KILN_BOOT_ID" >> "$HOOKS/reprovisioned"
echo $$ > "$HOOKS/reprovision.pid"
while [ -e "$HOOKS/hold" ]; do sleep 0.05; done
into="$KILN_TARGET_BUNDLE" ready="${READY_AFTER:-300}"
case "${MODE:-reboot}" in
  rollback) into="$ROLLBACK_TO" ;;
  hang) ready=never ;;
esac
# Like a real reprovisioning script, retry the API a few times; both changes are idempotent.
for attempt in 1 2 3 4 5 6; do
  if [ "${MODE:-reboot}" = relabel ]; then
    kubectl label node "$KILN_NODE" --overwrite "kiln.dev/bundle-version=$KILN_TARGET_BUNDLE" >&2 && exit 0
  else
    kubectl annotate node "$KILN_NODE" --overwrite "sim.kiln.dev/reboot-into=$into" "sim.kiln.dev/ready-after-ms=$ready" >&2 && exit 0
  fi
  sleep 0.2
done
exit 1
