#!/bin/sh
# The compose `migrate` service, a one-shot run as the database owner before the app starts:
# the schema migrations, then the app's own role and its grants (deploy/app_role.py). Both
# are idempotent; a failure stops the app from starting (service_completed_successfully).
set -eu
tickvault db migrate
python /app/deploy/app_role.py
