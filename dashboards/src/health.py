"""tcpstate-tracer / Daemon health: whether the daemons see everything, and what they cost."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import Threshold

from .common import increase, new_dashboard, rate, sel, series, single

ON = "on (job, instance, map)"


def build() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "tcpstate-health", "tcpstate-tracer / Daemon health",
            "The daemons themselves: events lost on the way from the kernel, how far behind they "
            "are, the program's maps against their capacity, reads of the kernel's socket table, "
            "and the timeline's writes.", ports=False)
        .with_row(dashboard.Row("Now"))
        .with_panel(single(
            "Daemons up",
            "Daemons Prometheus scraped successfully at its last scrape, of the chosen ones.",
            "short", f"sum({sel('up', ports=False)})", span=6))
        .with_panel(single(
            "Events lost",
            "Events lost in the dashboard's time range, all reasons: transitions are still "
            "counted in the kernel, but the lost ones are missing from states, durations and "
            "the timeline.",
            "short", f"sum(increase({sel('tcpstate_events_lost_total', ports=False)}[$__range]))",
            span=6, thresholds=[Threshold(color="green"), Threshold(value=1, color="red")]))
        .with_panel(single(
            "Event lag",
            "The largest lag now: how far behind the kernel the last batch of events was applied.",
            "s", f"max({sel('tcpstate_event_lag_seconds', ports=False)})", span=6,
            thresholds=[Threshold(color="green"), Threshold(value=1, color="orange")]))
        .with_panel(single(
            "Records failed",
            "Kernel records that raised while being applied and were skipped, in the time range "
            "(each logged with its traceback; /healthz says degraded).",
            "short", f"sum(increase({sel('tcpstate_records_failed_total', ports=False)}[$__range]))",
            span=6, thresholds=[Threshold(color="green"), Threshold(value=1, color="red")]))
        .with_row(dashboard.Row("Events"))
        .with_panel(series(
            "Events lost by reason",
            "Events lost per second: ring_buffer_full (the daemon did not keep up), "
            "program_not_run (the kernel skipped the program). Bind-conflict reports lost to a "
            "full buffer count separately.",
            "ops",
            [(f"sum by (instance, reason) ({rate('tcpstate_events_lost_total', ports=False)})",
              "{{instance}} {{reason}}")]))
        .with_panel(series(
            "Events received",
            "Events per second the daemon took in: from the ring buffer (sent by the program) "
            "and out of the program's map of young lives (taken).",
            "ops",
            [(f"sum by (instance) ({rate('tcpstate_kernel_events_sent_total', ports=False)})",
              "{{instance}} sent by the program"),
             (f"sum by (instance) ({rate('tcpstate_kernel_events_taken_total', ports=False)})",
              "{{instance}} taken from the map"),
             (f"sum by (instance) ({rate('tcpstate_events_received_total', ports=False)})",
              "{{instance}} received")]))
        .with_panel(series(
            "Event lag",
            "How far behind the kernel the last batch of events was applied, per daemon.",
            "s", [(f"max by (instance) ({sel('tcpstate_event_lag_seconds', ports=False)})", "{{instance}}")]))
        .with_panel(series(
            "Errors applying events",
            "Per interval: records that raised and were skipped, records that did not decode, "
            "sockets evicted from the daemon's full table.",
            "short",
            [(f"sum by (instance) ({increase('tcpstate_records_failed_total', ports=False)})", "{{instance}} failed"),
             (f"sum by (instance) ({increase('tcpstate_decode_errors_total', ports=False)})", "{{instance}} not decoded"),
             (f"sum by (instance) ({increase('tcpstate_sockets_evicted_total', ports=False)})", "{{instance}} evicted")]))
        .with_row(dashboard.Row("Kernel"))
        .with_panel(series(
            "Kernel map use",
            "Entries in each of the program's maps as a share of its capacity: counters (per "
            "port and edge; full, transitions count under port=\"other\"), sockets (role and "
            "owner), lives (young sockets being assembled).",
            "percentunit",
            [(f"max by (job, instance, map) ({sel('tcpstate_kernel_map_entries', ports=False)}) / {ON} "
              f"max by (job, instance, map) ({sel('tcpstate_kernel_map_capacity', ports=False)})",
              "{{instance}} {{map}}")],
            thresholds=[Threshold(color="green"), Threshold(value=0.9, color="red")]))
        .with_panel(series(
            "Kernel map full",
            "Updates each map refused because it was full, per interval.",
            "short",
            [(f"sum by (instance, map) ({increase('tcpstate_kernel_map_full_total', ports=False)})",
              "{{instance}} {{map}}")]))
        .with_panel(series(
            "Kernel socket table read time",
            "How long the last read of the kernel's socket table took (the watched states, in "
            "all network namespaces); it finds what no tracepoint shows: re-armed TIME_WAITs, "
            "sockets the daemon missed.",
            "s", [(f"max by (instance) ({sel('tcpstate_kernel_table_read_duration_seconds', ports=False)})",
                   "{{instance}}")]))
        .with_panel(series(
            "Corrections from the kernel's table",
            "Per interval, what the reads of the kernel's table corrected: modelled TIME_WAITs "
            "(reset, reused, absent_in_kernel, found_in_kernel, rearmed) and tracked sockets "
            "(gone, state), and failed reads.",
            "short",
            [(f"sum by (instance, reason) ({increase('tcpstate_timewait_corrections_total', ports=False)})",
              "{{instance}} TIME_WAIT {{reason}}"),
             (f"sum by (instance, reason) ({increase('tcpstate_socket_corrections_total', ports=False)})",
              "{{instance}} socket {{reason}}"),
             (f"sum by (instance) ({increase('tcpstate_kernel_table_read_failures_total', ports=False)})",
              "{{instance}} read failed")]))
        .with_row(dashboard.Row("Daemon"))
        .with_panel(series(
            "Sockets tracked",
            "Sockets the daemon holds in memory now, by kind, and ports folded into \"other\" "
            "past --max-ports.",
            "short",
            [(f"sum by (instance, kind) ({sel('tcpstate_sockets_tracked', ports=False)})", "{{instance}} {{kind}}"),
             (f"max by (instance) ({sel('tcpstate_ports_folded', ports=False)})", "{{instance}} ports folded")]))
        .with_panel(series(
            "Scrape duration",
            "How long the daemon took to answer the previous /metrics scrape.",
            "s", [(f"max by (instance) ({sel('tcpstate_scrape_duration_seconds', ports=False)})",
                   "{{instance}}")]))
        .with_row(dashboard.Row("Timeline"))
        .with_panel(series(
            "Timeline writes and drops",
            "Socket lives written to the timeline per second, and lost by reason (dropped: the "
            "writer fell behind past its bound; others: the store refused them).",
            "ops",
            [(f"sum by (instance) ({rate('tcpstate_timeline_records_written_total', ports=False)})",
              "{{instance}} written"),
             (f"sum by (instance, reason) ({rate('tcpstate_timeline_records_lost_total', ports=False)})",
              "{{instance}} lost {{reason}}")]))
        .with_panel(series(
            "Timeline size",
            "The timeline database's size on disk, per daemon (kept by --retention and "
            "--retention.size).",
            "bytes", [(f"max by (instance) ({sel('tcpstate_timeline_size_bytes', ports=False)})",
                       "{{instance}}")]))
    )
