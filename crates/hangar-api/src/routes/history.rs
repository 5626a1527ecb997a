//! Metric history as series of points for plots: what `?window=&step=` of
//! `GET /v1/agents/{id}/metrics` adds to the agent's metrics, and
//! `GET /v1/instances/{id}/metrics`, the same for any instance (the
//! Instances API, served at the root, has no metrics route of its own, so
//! this one lives under `/v1` with Hangar's extras).
//!
//! A series covers the window with equal steps, oldest first, the last one
//! holding now; steps start at multiples of the step since the Unix epoch,
//! so a plot refreshed later moves by whole steps. Every step has a point:
//! counts are zeros and unknowns (percentiles without invocations, CPU and
//! memory without replicas) `null` where nothing was recorded. Figures are
//! every server's, summed (see `hangar_store::StepFigures`).
//!
//! Not here: the totals of `GET /v1/agents/{id}/metrics` (`agents`), and the
//! Prometheus endpoint (`metrics`), which is per process and unchanged.

use axum::extract::State;
use axum::Json;
use hangar_store::{SeriesSpan, StepFigures};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, Path, Query};
use crate::render::{self, ok, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(instance_metrics))
}

/// Most points one series may have.
pub(crate) const MAX_POINTS: u64 = 1000;

/// A window of `GET …/metrics`: `1h`, `24h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// As the query said it.
    pub name: &'static str,
    /// Its length, seconds.
    pub seconds: u64,
}

impl Window {
    /// Reads `window` (`24h` when absent); a 400 naming the field for
    /// anything else.
    pub(crate) fn parse(window: Option<&str>) -> ApiResult<Self> {
        let (name, seconds) = match window.unwrap_or("24h") {
            "1h" => ("1h", 3600),
            "24h" => ("24h", 24 * 3600),
            "7d" => ("7d", 7 * 24 * 3600),
            _ => return Err(ApiError::invalid("window", "must be one of 1h, 24h, 7d")),
        };
        Ok(Self { name, seconds })
    }

    /// The step when none is asked for: 60 points (1 h by minutes), 288
    /// (24 h by 5 minutes) or 168 (7 d by hours).
    fn default_step(self) -> u64 {
        match self.seconds {
            3600 => 60,
            86_400 => 300,
            _ => 3600,
        }
    }

    /// Reads `step` for this window: seconds (`300`) or a whole number of
    /// `s`, `m`, `h` or `d` (`5m`), a multiple of a minute (the figures'
    /// resolution), at most the window and giving at most [`MAX_POINTS`]
    /// points; a 400 naming the field otherwise.
    pub(crate) fn step(self, step: Option<&str>) -> ApiResult<u64> {
        let Some(text) = step else {
            return Ok(self.default_step());
        };
        let bad = |why: String| ApiError::invalid("step", why);
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (n, unit) = text.split_at(split);
        let unit_seconds = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        let seconds = n
            .parse::<u64>()
            .ok()
            .filter(|_| unit_seconds > 0)
            .map(|n| n.saturating_mul(unit_seconds))
            .ok_or_else(|| {
                bad("must be seconds (300) or a number and a unit, s, m, h or d (5m)".into())
            })?;
        if seconds == 0 || seconds % 60 != 0 {
            return Err(bad(format!(
                "must be a whole number of minutes (a multiple of 60 seconds), got {seconds} s"
            )));
        }
        if seconds > self.seconds {
            return Err(bad(format!(
                "must be at most the window, {} s",
                self.seconds
            )));
        }
        if self.seconds.div_ceil(seconds) > MAX_POINTS {
            let least = self.seconds.div_ceil(MAX_POINTS).div_ceil(60) * 60;
            return Err(bad(format!(
                "gives more than {MAX_POINTS} points over {}: use at least {least} s",
                self.name
            )));
        }
        Ok(seconds)
    }

    /// The steps of `step_seconds` covering this window up to now.
    fn span(self, step_seconds: u64) -> SeriesSpan {
        let step_minutes = i64::try_from(step_seconds / 60).unwrap_or(i64::MAX);
        let steps = usize::try_from(self.seconds.div_ceil(step_seconds)).unwrap_or(usize::MAX);
        SeriesSpan::ending_at(hangar_controller::scale::unix_minute(), step_minutes, steps)
    }
}

/// One step of a series. Every field is always there; the unknowns are
/// `null`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct MetricPoint {
    /// Where the step starts (RFC 3339, UTC); it lasts `step_seconds`.
    at: String,
    /// Invocations answered in the step, through every server.
    requests: u64,
    /// Of which failed.
    errors: u64,
    /// Share of failed invocations, % (0 without invocations).
    error_rate_percent: f64,
    /// Median latency, ms, from the merged latency buckets of every server
    /// (each bucket spans a factor √2); `null` without invocations.
    #[schema(required = true)]
    p50_latency_ms: Option<f64>,
    /// 95th percentile latency, ms, likewise.
    #[schema(required = true)]
    p95_latency_ms: Option<f64>,
    /// Mean CPU use of the replicas, % of one CPU (summed over replicas and
    /// servers); `null` when none ran or none was measured yet.
    #[schema(required = true)]
    cpu_percent: Option<f64>,
    /// Mean memory of the replicas, MiB (summed likewise); `null` likewise.
    #[schema(required = true)]
    memory_mb: Option<f64>,
}

fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

impl MetricPoint {
    fn of(span: &SeriesSpan, i: usize, step: &StepFigures) -> Self {
        let at = chrono::DateTime::from_timestamp(span.step_start(i).saturating_mul(60), 0)
            .unwrap_or_default();
        let stats = hangar_controller::scale::RequestStats::from(step.counts);
        Self {
            at: render::ts(at),
            requests: step.counts.requests,
            errors: step.counts.errors,
            error_rate_percent: stats.error_rate_percent(),
            p50_latency_ms: step.latency.percentile_ms(0.50).map(|ms| rounded(ms, 3)),
            p95_latency_ms: step.latency.percentile_ms(0.95).map(|ms| rounded(ms, 3)),
            cpu_percent: step.cpu_percent().map(|p| rounded(p, 1)),
            memory_mb: step.memory_mb().map(|mb| rounded(mb, 1)),
        }
    }
}

/// The series of `instance_id` (all zeros and `null`s for none) over
/// `window` by `step_seconds`, through every server.
pub(crate) async fn series(
    state: &AppState,
    instance_id: Option<&str>,
    window: Window,
    step_seconds: u64,
) -> ApiResult<Vec<MetricPoint>> {
    let span = window.span(step_seconds);
    let steps = match instance_id {
        Some(id) => state.metric_series(id, span).await?,
        None => vec![StepFigures::default(); span.steps],
    };
    Ok(steps
        .iter()
        .enumerate()
        .map(|(i, step)| MetricPoint::of(&span, i, step))
        .collect())
}

/// Query of the metric series routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SeriesQuery {
    /// `1h`, `24h` (default) or `7d`.
    #[param(pattern = "^(1h|24h|7d)$")]
    pub window: Option<String>,
    /// Length of each point of `series`: seconds (`300`) or a number and a
    /// unit, `s`, `m`, `h` or `d` (`5m`); a multiple of 60 s, at most the
    /// window and at most 1,000 points. Default: 60 s for `1h`, 300 s for
    /// `24h`, 3600 s for `7d`.
    #[param(pattern = "^[0-9]+[smhd]?$")]
    pub step: Option<String>,
}

/// An instance's metric history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstanceMetricHistory {
    /// The instance.
    instance_id: String,
    /// The window the series covers.
    window: String,
    /// Length of each point, seconds.
    step_seconds: u64,
    /// One point per step across the window, oldest first.
    series: Vec<MetricPoint>,
}

/// Get an instance's metric history: requests, errors, latency
/// percentiles, CPU and memory per step over the window, through every
/// server on the database (kept for the server's `--metric-retention`).
#[utoipa::path(get, path = "/v1/instances/{id}/metrics", tag = "instances",
    params(("id" = String, Path, description = "Instance ID"), SeriesQuery),
    responses(
        (status = 200, body = Envelope<InstanceMetricHistory>),
        (status = 400, description = "INVALID_REQUEST (field `window` or `step`)"),
        (status = 404, description = "INSTANCE_NOT_FOUND"),
    ))]
async fn instance_metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> ApiResult<Json<Envelope<InstanceMetricHistory>>> {
    let window = Window::parse(q.window.as_deref())?;
    let step_seconds = window.step(q.step.as_deref())?;
    let instance = state
        .store
        .get_instance(caller.org(), &id)
        .await?
        .found(Kind::Instance, &id)?;
    let series = series(&state, Some(&instance.id), window, step_seconds).await?;
    Ok(ok(InstanceMetricHistory {
        instance_id: instance.id,
        window: window.name.to_owned(),
        step_seconds,
        series,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(err: &ApiError) -> Option<&str> {
        match err {
            ApiError::Invalid { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn steps_default_by_window_and_are_whole_minutes_within_a_thousand_points() {
        let hour = Window::parse(Some("1h")).expect("1h");
        let day = Window::parse(None).expect("default");
        let week = Window::parse(Some("7d")).expect("7d");
        assert_eq!(day.name, "24h");
        assert_eq!(
            (
                hour.step(None).ok(),
                day.step(None).ok(),
                week.step(None).ok()
            ),
            (Some(60), Some(300), Some(3600))
        );
        for (window, step, seconds) in [
            (hour, "60", 60),
            (hour, "1m", 60),
            (hour, "120s", 120),
            (hour, "1h", 3600),
            (day, "5m", 300),
            (week, "1h", 3600),
            (week, "660", 660),
            (week, "1d", 86_400),
        ] {
            assert_eq!(window.step(Some(step)).ok(), Some(seconds), "{step}");
        }
        for (window, step) in [
            (hour, "0"),
            (hour, "30"),
            (hour, "90s"),
            (hour, "2h"),
            (hour, "1 m"),
            (hour, "-60"),
            (hour, "m"),
            (hour, "1w"),
            (hour, ""),
            (week, "60"),
            (week, "600"),
        ] {
            let err = window.step(Some(step)).expect_err(step);
            assert_eq!(field(&err), Some("step"), "{step}");
        }
        let err = Window::parse(Some("1y")).expect_err("1y");
        assert_eq!(field(&err), Some("window"));
    }

    #[test]
    fn a_span_has_a_step_per_point_ending_with_now() {
        let week = Window::parse(Some("7d")).expect("7d");
        let before = hangar_controller::scale::unix_minute();
        let span = week.span(3600);
        let after = hangar_controller::scale::unix_minute();
        assert_eq!(span.steps, 168);
        assert_eq!(span.step_minutes, 60);
        // The hour may turn between two reads of the clock, not twice.
        assert!(
            span.step_of(before) == Some(167) || span.step_of(after) == Some(167),
            "{span:?} ends with the step of now"
        );
        let hour = Window::parse(Some("1h")).expect("1h");
        assert_eq!(hour.span(420).steps, 9, "⌈60 / 7⌉");
    }

    #[test]
    fn a_point_of_nothing_has_zeros_and_nulls() {
        let span = SeriesSpan::ending_at(29_000_000, 5, 2);
        let point = MetricPoint::of(&span, 1, &StepFigures::default());
        let json = serde_json::to_value(point).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "at": "2025-02-19T21:20:00Z",
                "requests": 0,
                "errors": 0,
                "error_rate_percent": 0.0,
                "p50_latency_ms": null,
                "p95_latency_ms": null,
                "cpu_percent": null,
                "memory_mb": null,
            })
        );
    }
}
