"""What every dashboard shares: the variables, the selector every query starts from,
and panels with their defaults (templated datasource, a unit, a description).

Invariants the tests hold the dashboards to (tests/unit/test_dashboards.py):
- every query selects through ``sel()``, so it carries job, instance (and port where the
  metric has one) from the variables;
- a counter, or a histogram's series, is only ever read through ``rate()`` or
  ``increase()`` over ``$__rate_interval`` (or ``increase()`` over ``$__range``, a summary
  of the whole time range);
- every panel has a description and a unit.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import prometheus as prom
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "tcpstate-tracer"
# The job and instance variables read their values from this series: one per daemon.
INFO = "tcpstate_build_info"


def sel(metric: str, ports: bool = True, **matchers: str) -> str:
    """``metric{job=~"$job",instance=~"$instance"[,port=~"$port"], matchers...}``, the
    port matcher only for ``ports`` metrics. A matcher value that starts with ``~`` is a
    regex match (``state="~A|B"``), with ``!`` a negative one (``port="!other"``)."""
    parts = ['job=~"$job"', 'instance=~"$instance"']
    if ports:
        parts.append('port=~"$port"')
    for label, value in matchers.items():
        if value.startswith("~"):
            parts.append(f'{label}=~"{value[1:]}"')
        elif value.startswith("!"):
            parts.append(f'{label}!="{value[1:]}"')
        else:
            parts.append(f'{label}="{value}"')
    return f"{metric}{{{','.join(parts)}}}"


def rate(metric: str, ports: bool = True, **matchers: str) -> str:
    return f"rate({sel(metric, ports, **matchers)}[$__rate_interval])"


def increase(metric: str, ports: bool = True, **matchers: str) -> str:
    return f"increase({sel(metric, ports, **matchers)}[$__rate_interval])"


def query_variable(name: str, label: str, query: str, description: str) -> dashboard.QueryVariable:
    # The linter's template-job and template-instance rules: multi-select, "All" as .+,
    # refreshed when the time range changes (template-on-time-change-reload).
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .query(query)
        .datasource(DATASOURCE)
        .current(VariableOption(selected=True, text="All", value="$__all"))
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )


def new_dashboard(uid: str, title: str, description: str, ports: bool = True) -> dashboard.Dashboard:
    """A dashboard with the datasource, job and instance variables (and port when its
    queries have ports), linked to the project's other dashboards with the same
    variables and time range."""
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        # Provisioned from files: edits in the UI would be lost (the linter's uneditable rule).
        .readonly()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .link(
            dashboard.DashboardLink("tcpstate-tracer")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .description("The Prometheus that scrapes the tcpstate-tracer daemons")
            .type("prometheus")
        )
        .with_variable(query_variable(
            "job", "Job", f"label_values({INFO}, job)",
            "Scrape jobs of tcpstate-tracer daemons (deploy/prometheus: tcpstate-tracer)"))
        .with_variable(query_variable(
            "instance", "Instance", f'label_values({INFO}{{job=~"$job"}}, instance)',
            "Hosts: one daemon per host or node; choose several to compare them"))
    )
    if ports:
        board = board.with_variable(query_variable(
            "port", "Port",
            'label_values(tcpstate_transitions_total{job=~"$job",instance=~"$instance"}, port)',
            "Service ports: a listener's own port, a client's remote port; \"other\" holds the "
            "ports past --max-ports and ephemeral ports nobody listens on"))
    return board


def _defaults(panel, title: str, description: str, unit: str, span: int, height: int):
    return (panel.title(title).description(description).datasource(DATASOURCE).unit(unit)
            .span(span).height(height))


def target(expr: str, legend: str = "", ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref_id).range()


def instant(expr: str, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).instant().format(prom.PromQueryFormat.TABLE).ref_id(ref_id)


def series(title: str, description: str, unit: str, queries: list[tuple[str, str]], *,
           span: int = 12, height: int = 8, stack: bool = False, min_zero: bool = True,
           links: list[dashboard.DashboardLink] | None = None,
           thresholds: list[Threshold] | None = None) -> timeseries.Panel:
    """A time series of ``queries`` [(expr, legend)]."""
    panel = _defaults(timeseries.Panel(), title, description, unit, span, height)
    panel = (panel.line_width(1).fill_opacity(10 if not stack else 40).show_points(common.VisibilityMode.NEVER)
             .legend(common_builder.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["max", "lastNotNull"]))
             .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    if min_zero:
        panel = panel.min(0)
    if stack:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(target(expr, legend, ref_id=chr(ord("A") + i)))
    if links:
        panel = panel.data_links(links)
    if thresholds:
        panel = (panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(thresholds))
                 .thresholds_style(common_builder.GraphThresholdsStyleConfig()
                                   .mode(common.GraphThresholdsStyleMode.DASHED)))
    return panel


def single(title: str, description: str, unit: str, expr: str, *, span: int = 4, height: int = 4,
           thresholds: list[Threshold] | None = None) -> stat.Panel:
    """One number now (the last value of ``expr``), with a sparkline."""
    panel = _defaults(stat.Panel(), title, description, unit, span, height)
    panel = (panel.with_target(target(expr, ""))
             .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
             .graph_mode(common.BigValueGraphMode.AREA)
             .color_mode(common.BigValueColorMode.VALUE))
    steps = thresholds or [Threshold(color="green")]
    return panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))


def histogram_heatmap(title: str, description: str, expr: str, *, span: int = 12,
                      height: int = 8) -> heatmap.Panel:
    """A heatmap of a histogram's buckets as Prometheus has them (``sum by (le)`` of the
    rated ``_bucket`` series), not re-bucketed by Grafana: a cell is how many sockets a
    second left the state within that bucket."""
    panel = _defaults(heatmap.Panel(), title, description, "s", span, height)
    return (panel
            .with_target(target(expr, "{{le}}").format(prom.PromQueryFormat.HEATMAP))
            .calculate(False)
            .y_axis(heatmap.YAxisConfig().unit("s").axis_placement(common.AxisPlacement.LEFT))
            .cell_values(heatmap.CellValues().unit("cps"))
            .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64).reverse(False)
                   .fill("dark-orange"))
            .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
            .show_legend())


def grid(title: str, description: str, unit: str, queries: list[tuple[str, str]], *, span: int = 24,
         height: int = 8, links: list[tuple[str, str, str]] | None = None,
         units: dict[str, str] | None = None) -> table.Panel:
    """A table of instant ``queries`` [(expr, column)] merged into one row per label set;
    ``links`` [(column, title, url)] put a data link on a column, ``units`` {column: unit}
    give a column its own unit."""
    panel = _defaults(table.Panel(), title, description, unit, span, height)
    for i, (expr, _) in enumerate(queries):
        panel = panel.with_target(instant(expr, ref_id=chr(ord("A") + i)))
    names = {f"Value #{chr(ord('A') + i)}": name for i, (_, name) in enumerate(queries)}
    panel = (panel
             .with_transformation(DataTransformerConfig(id_val="merge", options={}))
             .with_transformation(DataTransformerConfig(id_val="organize", options={
                 "excludeByName": {"Time": True}, "renameByName": names}))
             .filterable(False).frame_index(0).show_header(True))
    for column, title_, url in links or []:
        panel = panel.override_by_name(column, [DynamicConfigValue(
            id_val="links", value=[{"title": title_, "url": url, "targetBlank": True}])])
    for column, unit_ in (units or {}).items():
        panel = panel.override_by_name(column, [DynamicConfigValue(id_val="unit", value=unit_)])
    return panel

