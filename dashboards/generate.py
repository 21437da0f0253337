#!/usr/bin/env python3
"""Writes the Grafana dashboards in grafana/ from the panel lists below (python3 dashboards/generate.py).
The JSON is committed; edit here and regenerate so the five dashboards stay consistent."""
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
        ("Upstream paused", "max by (upstream) (createimage2_upstream_paused)", "short"),
        ("Generations by outcome / s", "sum by (outcome, resolution) (rate(createimage2_generations_total[5m]))", "ops"),
        ("Intent → stored p50", "histogram_quantile(0.5, sum by (le) (rate(createimage2_generation_seconds_bucket{outcome=\"succeeded\"}[5m])))", "s"),
        ("Intent → stored p95", "histogram_quantile(0.95, sum by (le) (rate(createimage2_generation_seconds_bucket{outcome=\"succeeded\"}[5m])))", "s"),
    ]),
    "http": ("createimage2 — HTTP", [
        ("Requests / s by route and status", "sum by (route, status) (rate(http_requests_total[5m]))", "reqps"),
        ("Latency p95 by route", "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))", "s"),
        ("5xx ratio", "(sum(rate(http_requests_total{status=~\"5..\"}[5m])) or vector(0)) / sum(rate(http_requests_total[5m]))", "percentunit"),
    ]),
    "business": ("createimage2 — business", [
        ("Generations in the last hour", "sum by (outcome, resolution) (increase(createimage2_generations_total[1h]))", "short"),
        ("Credits moved in the last hour", "sum by (kind) (increase(createimage2_credits_total[1h]))", "short"),
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
                "targets": [{"refId": "A", "datasource": DS, "expr": expr, "legendFormat": "__auto"}],
            }
            for n, (panel_title, expr, unit) in enumerate(panels)
        ],
    }
    path = pathlib.Path(__file__).parent / "grafana" / f"{slug}.json"
    path.write_text(json.dumps(dashboard, indent=2) + "\n")
