//! HTTP metrics of the public API, as an axum middleware over every route:
//!
//! * `tallyhouse_http_requests_total{route,method,status}`: finished requests;
//! * `tallyhouse_http_request_duration_seconds{route,method}` (histogram):
//!   time to the response head (a streamed body is not waited for);
//! * `tallyhouse_http_requests_in_flight`: requests being handled.
//!
//! `route` is the matched route template (`/v1/packages/{submitter}/{package_id}`),
//! never the raw path, and `unmatched` for requests no route matches;
//! `method` is one of the standard methods or `other`: every label has a
//! small, fixed set of values whatever clients send.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use tokio::time::Instant;

/// The `route` of requests that match no route.
pub(crate) const UNMATCHED: &str = "unmatched";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The gateway's HTTP metric families (cheap to clone).
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
}

impl HttpMetrics {
    /// The families, registered under `tallyhouse_http_*` in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        sub.register(
            "http_requests",
            "Finished HTTP requests of the public API, by route template, method and status",
            m.requests.clone(),
        );
        sub.register_with_unit(
            "http_request_duration",
            "Time from an HTTP request to its response head, by route template and method",
            Unit::Seconds,
            m.duration.clone(),
        );
        sub.register(
            "http_requests_in_flight",
            "HTTP requests of the public API being handled",
            m.in_flight.clone(),
        );
        m
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Decrements the in-flight gauge when the request ends, answered or not
/// (a client hanging up drops the handler's future).
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The middleware: `.layer(middleware::from_fn_with_state(metrics, track))`.
pub(crate) async fn track(
    State(metrics): State<HttpMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let route: Arc<str> = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| Arc::from(UNMATCHED), |p| Arc::from(p.as_str()));
    let method = method_label(req.method());
    metrics.in_flight.inc();
    let _in_flight = InFlight(metrics.in_flight.clone());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics
        .duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method,
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Sends one raw HTTP/1.1 request and returns the status line.
    async fn send(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_never_by_raw_path() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let app = Router::new()
            .route("/v1/things/{id}", get(|| async { "thing" }))
            .layer(axum::middleware::from_fn_with_state(metrics, track));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(send(addr, "GET", "/v1/things/a1").await.contains("200"));
        assert!(send(addr, "GET", "/v1/things/b2").await.contains("200"));
        assert!(send(addr, "GET", "/nowhere/c3").await.contains("404"));
        assert!(send(addr, "BREW", "/v1/things/d4").await.contains("405"));
        server.abort();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_http_requests_total{route=\"/v1/things/{id}\",method=\"GET\",status=\"200\"} 2",
            "tallyhouse_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
            "tallyhouse_http_requests_total{route=\"/v1/things/{id}\",method=\"other\",status=\"405\"} 1",
            "tallyhouse_http_request_duration_seconds_count{route=\"/v1/things/{id}\",method=\"GET\"} 2",
            "tallyhouse_http_requests_in_flight 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        for raw in ["a1", "b2", "c3", "d4"] {
            assert!(!text.contains(raw), "raw path part {raw} in\n{text}");
        }
    }
}
