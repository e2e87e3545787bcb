"""The host the daemon runs on: kernel headers, tracefs, sysctls, the preflight
check and the probe for threads no BPF program sees."""
