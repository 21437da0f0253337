#!/usr/bin/env python3
"""Writes the Grafana dashboards in grafana/ from the panel lists below (python3 dashboards/generate.py).
The JSON is committed; edit here and regenerate so the dashboards stay consistent. A panel is
(title, expression, unit), or (title, [(legend, expression), ...], unit) for several series on one panel.
dashboards/check.py requires every expression to return data against the running stack: a counter or gauge that
exists at zero is data, a filter like `increase(...) > 0` that leaves nothing is not."""
import json, pathlib

DS = {"type": "prometheus", "uid": "prometheus"}
# Gauges read from the database come from the scheduler (every replica exports the same value): max, not sum.
DASHBOARDS = {
    "overview": ("createimage2 — overview", [
        ("Jobs by queue and state", "max by (queue, state) (createimage2_jobs)", "short"),
        ("Oldest waiting job by queue", "max by (queue) (createimage2_job_oldest_waiting_age_seconds)", "s"),
        ("Jobs completed / s", "sum by (queue) (rate(createimage2_jobs_completed_total[5m]))", "ops"),
        ("Generations finished / s", "sum by (outcome) (rate(createimage2_generations_total[5m]))", "ops"),
        ("HTTP requests / s", "sum by (route) (rate(http_requests_total[5m]))", "reqps"),
        ("Targets up", "up", "short"),
    ]),
    "queues": ("createimage2 — queues", [
        ("Depth by state", "max by (queue, state) (createimage2_jobs)", "short"),
        ("Oldest waiting age", "max by (queue) (createimage2_job_oldest_waiting_age_seconds)", "s"),
        ("Wait p50 (run_at → start)", "histogram_quantile(0.5, sum by (le, queue) (rate(createimage2_job_wait_seconds_bucket[5m])))", "s"),
        ("Wait p99 (run_at → start)", "histogram_quantile(0.99, sum by (le, queue) (rate(createimage2_job_wait_seconds_bucket[5m])))", "s"),
        ("Attempt duration p95 by outcome", "histogram_quantile(0.95, sum by (le, queue, outcome) (rate(createimage2_job_duration_seconds_bucket[5m])))", "s"),
        ("Completed / s", "sum by (queue) (rate(createimage2_jobs_completed_total[5m]))", "ops"),
        ("Retried / s", "sum by (queue) (rate(createimage2_jobs_retried_total[5m]))", "ops"),
        ("Snoozed / s", "sum by (queue) (rate(createimage2_jobs_snoozed_total[5m]))", "ops"),
        ("Dead in the last hour", "sum by (queue) (increase(createimage2_jobs_dead_total[1h]))", "short"),
        ("Stuck (worker silent)", "max by (queue) (createimage2_jobs_stuck)", "short"),
        ("Live queue runners", "sum by (queue) (createimage2_workers_alive)", "short"),
    ]),
    "pipeline": ("createimage2 — pipeline and upstreams", [
        ("Upstream requests / s by outcome", "sum by (upstream, operation, outcome) (rate(createimage2_upstream_requests_total[5m]))", "reqps"),
        ("Upstream latency p95", "histogram_quantile(0.95, sum by (le, upstream, operation) (rate(createimage2_upstream_request_duration_seconds_bucket[5m])))", "s"),
        ("Upstream error ratio", "(sum by (upstream) (rate(createimage2_upstream_requests_total{outcome!=\"ok\"}[5m])) or sum by (upstream) (rate(createimage2_upstream_requests_total[5m])) * 0) / sum by (upstream) (rate(createimage2_upstream_requests_total[5m]))", "percentunit"),
        ("Work deferred by the fleet-wide limiter / s", "sum by (upstream) (rate(createimage2_upstream_rate_limit_wait_seconds_count[5m]))", "ops"),
        ("Upstream paused, by kind (operator: sticky; automatic: the probe lifts it)", "max by (upstream, kind) (createimage2_upstream_paused)", "short"),
        ("kie.ai credit balance", "max by (upstream) (createimage2_upstream_credit_balance)", "short"),
        ("Generations by outcome / s", "sum by (outcome, resolution) (rate(createimage2_generations_total[5m]))", "ops"),
        ("Generation failures / s by reason", "sum by (reason) (rate(createimage2_generation_failures_total[5m]))", "ops"),
        ("Generation failure ratio (content policy and cancellations excluded; alert > 10%)", "sum(rate(createimage2_generation_failures_total{reason!=\"content_policy\"}[10m])) / sum(rate(createimage2_generations_total{outcome!=\"cancelled\"}[10m]))", "percentunit"),
        ("Intent → stored p50", "histogram_quantile(0.5, sum by (le) (rate(createimage2_generation_seconds_bucket{outcome=\"succeeded\"}[5m])))", "s"),
        ("Intent → stored p95", "histogram_quantile(0.95, sum by (le) (rate(createimage2_generation_seconds_bucket{outcome=\"succeeded\"}[5m])))", "s"),
    ]),
    "http": ("createimage2 — HTTP", [
        ("Requests / s by route and status", "sum by (route, status) (rate(http_requests_total[5m]))", "reqps"),
        ("Latency p95 by route", "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))", "s"),
        ("5xx ratio (alert > 5%)", "(sum(rate(http_requests_total{status=~\"5..\"}[5m])) or vector(0)) / sum(rate(http_requests_total[5m]))", "percentunit"),
        # SLO: 99% of non-streaming requests within 0.5 s over 30 days; recording rules in alerts.yml.
        ("Latency SLO burn rate (1 = budget lasts 30 days; page 14.4 / 6, ticket 3 / 1)", [
            (window, f"createimage2:http_slow_ratio:rate{window} / 0.01")
            for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
        ], "short"),
        ("Share of requests slower than 0.5 s, by route", "1 - sum by (route) (rate(http_request_duration_seconds_bucket{le=\"0.5\"}[5m])) / sum by (route) (rate(http_request_duration_seconds_count[5m]))", "percentunit"),
        ("Open server-sent-event streams", "sum by (route) (createimage2_sse_streams)", "short"),
    ]),
    "operations": ("createimage2 — operations", [
        ("Database connections per process", [
            ("{{instance}} in use", "sum by (instance) (createimage2_db_pool_connections{state=\"in_use\"})"),
            ("{{instance}} idle", "sum by (instance) (createimage2_db_pool_connections{state=\"idle\"})"),
            ("{{instance}} max", "max by (instance) (createimage2_db_pool_max_connections)"),
        ], "short"),
        ("Database pool in use / max (alert > 90%)", "max by (instance) (createimage2_db_pool_connections{state=\"in_use\"}) / max by (instance) (createimage2_db_pool_max_connections)", "percentunit"),
        ("Resident memory", "max by (instance) (process_resident_memory_bytes)", "bytes"),
        ("CPU (cores)", "sum by (instance) (rate(process_cpu_seconds_total[5m]))", "short"),
        ("Open file descriptors / limit", "max by (instance) (process_open_fds) / max by (instance) (process_max_fds)", "percentunit"),
        ("Process starts in the last hour", "changes(process_start_time_seconds[1h])", "short"),
        ("Queue runner restarts and attempt panics in the last hour", [
            ("restarts {{queue}}", "sum by (queue) (increase(createimage2_job_runner_restarts_total[1h]))"),
            ("panics {{queue}}", "sum by (queue) (increase(createimage2_job_panics_total[1h]))"),
        ], "short"),
        ("Jobs reaped (worker vanished) and handed back (drain) in the last hour", [
            ("reaped {{queue}} {{outcome}}", "sum by (queue, outcome) (increase(createimage2_jobs_reaped_total[1h]))"),
            ("handed back {{queue}}", "sum by (queue) (increase(createimage2_jobs_handed_back_total[1h]))"),
        ], "short"),
        ("Queues paused by an operator", "max by (queue) (createimage2_queue_paused)", "short"),
        ("Upstream paused, by kind", "max by (upstream, kind) (createimage2_upstream_paused)", "short"),
        ("Schedules: time since last success (alert above 3 periods + 5 min)", [
            ("{{schedule}}", "time() - max by (schedule) (createimage2_schedule_last_success_timestamp_seconds)"),
            ("{{schedule}} alert threshold", "3 * max by (schedule) (createimage2_schedule_interval_seconds) + 300"),
        ], "s"),
        ("Processes by role", "count by (role) (createimage2_build_info)", "short"),
    ]),
    "business": ("createimage2 — business", [
        ("Generations in the last hour", "sum by (outcome, resolution) (increase(createimage2_generations_total[1h]))", "short"),
        ("Credits moved in the last hour", "sum by (kind) (increase(createimage2_credits_total[1h]))", "short"),
        ("Stripe purchases in the last 24 h", "sum by (kind) (increase(createimage2_stripe_purchases_total[1d]))", "short"),
        ("Stripe refunds, disputes and reconciliation recoveries in the last 24 h", [
            ("refunds", "sum(increase(createimage2_stripe_refunds_total[1d]))"),
            ("disputes {{event}}", "sum by (event) (increase(createimage2_stripe_disputes_total[1d]))"),
            ("recovered by reconciliation", "sum(increase(createimage2_stripe_reconciliation_recoveries_total[1d]))"),
        ], "short"),
        ("Stripe webhooks by outcome / s", "sum by (outcome) (rate(createimage2_stripe_webhooks_total[5m]))", "ops"),
        ("Stripe event processing failures in the last hour, by type", "sum by (type) (increase(createimage2_stripe_event_failures_total[1h]))", "short"),
        ("E-mails in the last hour", "sum by (outcome) (increase(createimage2_emails_total[1h]))", "short"),
        ("Exports built and accounts deleted in the last 24 h", [
            ("exports built", "sum(increase(createimage2_exports_built_total[1d]))"),
            ("accounts deleted", "sum(increase(createimage2_accounts_deleted_total[1d]))"),
        ], "short"),
        ("Trial checks by outcome in the last hour", "sum by (outcome) (increase(createimage2_trial_checks_total[1h]))", "short"),
        ("Builds and roles running", "count by (version, role) (createimage2_build_info)", "short"),
    ]),
}

for slug, (title, panels) in DASHBOARDS.items():
    dashboard = {
        "uid": f"createimage2-{slug}", "title": title, "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["createimage2"],
        "panels": [
            {
                "id": n + 1, "type": "timeseries", "title": panel_title, "datasource": DS,
                "gridPos": {"h": 8, "w": 12, "x": (n % 2) * 12, "y": (n // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DS, "expr": target, "legendFormat": legend}
                    for i, (legend, target) in enumerate(
                        [("__auto", exprs)] if isinstance(exprs, str) else exprs
                    )
                ],
            }
            for n, (panel_title, exprs, unit) in enumerate(panels)
        ],
    }
    path = pathlib.Path(__file__).parent / "grafana" / f"{slug}.json"
    path.write_text(json.dumps(dashboard, indent=2) + "\n")
