#!/usr/bin/env bash
# The cost of reading 100,000 TIME_WAIT sockets from the kernel's table (issue 3).
# Makes them in a private network namespace (4 ports x 25,000 client-closed loopback
# connections), times kernel_table.dump(), then deletes the namespace. As root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=tst-kt-bench-$$
gcc -O2 -pthread -o "$here/churn" "$here/churn.c"
ip netns add "$ns"
trap 'ip netns del "$ns"; rm -f "$here/churn"' EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$here/churn" 20001 4 25000
"$here/../../../.venv/bin/python" "$here/bench.py"
