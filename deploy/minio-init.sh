#!/bin/sh
# Run once by the minio-init service of minio-compose.yml (image minio/mc): the bucket,
# lifecycle expiry, least-privilege policies and users. Idempotent: safe to run again.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing local/wonders

# A backstop for what the forwarder's janitor deletes: requests, claims and responses
# never need to outlive a day. The audit log is never expired here.
for prefix in requests/ claims/ responses/; do
    mc ilm rule add --expire-days 1 --prefix "$prefix" local/wonders
done

for role in gpu forwarder auditor; do
    mc admin policy create local "wonders-$role" "/deploy/policies/$role.json"
done

# The forwarder's user, and one user per GPU client, each with its own secret: the user
# name must be the client name (the gpu policy confines each user to requests/<name>/
# and responses/<name>/). GPU_CLIENTS="gpu01:secret1 gpu02:secret2".
mc admin user add local forwarder "$FORWARDER_SECRET"
mc admin policy attach local wonders-forwarder --user forwarder
for entry in $GPU_CLIENTS; do
    name=${entry%%:*}
    secret=${entry#*:}
    mc admin user add local "$name" "$secret"
    mc admin policy attach local wonders-gpu --user "$name"
done
mc admin user add local auditor "$AUDITOR_SECRET"
mc admin policy attach local wonders-auditor --user auditor

# Optional: an object-locked audit bucket (WORM, compliance mode). Point the forwarder's
# [audit] mailbox at s3://wonders-audit to use it.
if [ "${AUDIT_LOCKED:-0}" = 1 ]; then
    mc mb --ignore-existing --with-lock local/wonders-audit
    mc retention set --default COMPLIANCE "${AUDIT_RETENTION:-365d}" local/wonders-audit
fi
echo "wonders: bucket, policies and users are ready"
