//! `trialbridge bench`: a bounded loopback load generator for FHIR servers, so trialbridge and
//! a peer server are measured with the same client in the same run (see BENCHMARKS.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Arguments of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// FHIR base URL of the server under test (e.g. http://127.0.0.1:8080/fhir).
    #[arg(long)]
    pub base: String,
    /// put | post | get | txn | query (GET --path repeatedly)
    #[arg(long)]
    pub scenario: String,
    /// For `query`: the path and query below the base, e.g. `Observation?code=http://loinc.org|8867-4`.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// At most this many requests.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// At most this many seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// NDJSON file of Observations.
    #[arg(long)]
    pub data: PathBuf,
    /// Prefix for the ids written by `put` and `txn`.
    #[arg(long, default_value = "")]
    pub id_prefix: String,
    /// Entries per transaction Bundle (`txn`).
    #[arg(long, default_value_t = 100)]
    pub txn_size: usize,
    /// For `put`: write the resources as this type instead (same bytes, other search parameters),
    /// to measure what indexing costs.
    #[arg(long)]
    pub as_type: Option<String>,
    /// For `put`: write each resource with `status` set to this code, so that writing ids a
    /// run wrote before updates them (an unchanged body is not a new version), e.g.
    /// `entered-in-error` (valid whatever else the resource holds);
    /// such a change is sent with a reason for change (`X-Reason-For-Change`), as the audit
    /// trail requires.
    #[arg(long)]
    pub status: Option<String>,
    /// A label printed with the figures (e.g. the server's name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "TRIALBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn request_for(
    args: &BenchArgs,
    obs: &[Value],
    k: usize,
    base_path: &str,
) -> Option<(hyper::Method, String, Option<Bytes>)> {
    let n = obs.len();
    match args.scenario.as_str() {
        "put" => {
            // Past the end of the data the same resources are written again under new ids.
            let o = &obs[k % n];
            let round = if k >= n {
                format!("r{}-", k / n)
            } else {
                String::new()
            };
            let id = format!(
                "{}{round}{}",
                args.id_prefix,
                o["id"].as_str().unwrap_or_default()
            );
            let mut o = o.clone();
            o["id"] = json!(id);
            let rtype = args.as_type.clone().unwrap_or_else(|| "Observation".into());
            o["resourceType"] = json!(rtype);
            if let Some(status) = &args.status {
                o["status"] = json!(status);
            }
            Some((
                hyper::Method::PUT,
                format!("{base_path}/{rtype}/{id}"),
                Some(Bytes::from(o.to_string())),
            ))
        }
        "post" => {
            let mut o = obs[k % n].clone();
            if let Value::Object(m) = &mut o {
                m.remove("id");
            }
            Some((
                hyper::Method::POST,
                format!("{base_path}/Observation"),
                Some(Bytes::from(o.to_string())),
            ))
        }
        "get" => {
            // A fixed stride walks every id without a random-number dependency.
            let o = &obs[(k * 7919) % n];
            Some((
                hyper::Method::GET,
                format!(
                    "{base_path}/Observation/{}{}",
                    args.id_prefix,
                    o["id"].as_str().unwrap_or_default()
                ),
                None,
            ))
        }
        "query" => Some((
            hyper::Method::GET,
            format!("{base_path}/{}", args.path.trim_start_matches('/')),
            None,
        )),
        "txn" => {
            let entries: Vec<Value> = (0..args.txn_size)
                .map(|j| {
                    let mut o = obs[(k * args.txn_size + j) % n].clone();
                    let id = format!("{}tx{k}-{}", args.id_prefix, o["id"].as_str().unwrap_or_default());
                    o["id"] = json!(id);
                    json!({ "resource": o, "request": { "method": "PUT", "url": format!("Observation/{id}") } })
                })
                .collect();
            let b = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
            Some((
                hyper::Method::POST,
                base_path.to_string(),
                Some(Bytes::from(b.to_string())),
            ))
        }
        _ => None,
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !matches!(
        args.scenario.as_str(),
        "put" | "post" | "get" | "txn" | "query"
    ) {
        anyhow::bail!("--scenario must be put, post, get, txn or query");
    }
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("cannot read {}", args.data.display()))?;
    let obs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    if obs.is_empty() {
        anyhow::bail!("{} holds no resources", args.data.display());
    }
    let uri: hyper::Uri = args.base.parse().context("--base is not a URL")?;
    let authority = uri
        .authority()
        .context("--base needs a host and port")?
        .to_string();
    let base_path = uri.path().trim_end_matches('/').to_string();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let args = Arc::new(args);
    let obs = Arc::new(obs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, args, obs, authority, base_path) = (
            client.clone(),
            next.clone(),
            args.clone(),
            obs.clone(),
            authority.clone(),
            base_path.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut bytes = 0usize;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= args.requests || Instant::now() >= deadline {
                    break;
                }
                let Some((method, path, body)) = request_for(&args, &obs, k, &base_path) else {
                    break;
                };
                let mut req = hyper::Request::builder()
                    .method(method)
                    .uri(format!("http://{authority}{path}"))
                    .header("accept", "application/fhir+json");
                if body.is_some() {
                    req = req.header("content-type", "application/fhir+json");
                }
                if let Some(t) = &args.token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                if let Some(status) = &args.status {
                    req = req.header("x-reason-for-change", format!("benchmark: status {status}"));
                }
                let Ok(req) = req.body(Full::new(body.unwrap_or_default())) else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let body = resp.into_body().collect().await;
                        // A failed request is counted apart: its time is not throughput.
                        if ok {
                            lat.push(t.elapsed());
                            // What the answers weighed: two servers' figures for one query
                            // compare only if they answered the same (a `_revinclude` a
                            // server ignores is fast).
                            bytes += body.map_or(0, |b| b.to_bytes().len());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, bytes)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut bytes = 0;
    for w in workers {
        let (l, e, b) = w.await?;
        lat.extend(l);
        errors += e;
        bytes += b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let n = lat.len();
    let per_request = if args.scenario == "txn" {
        args.txn_size
    } else {
        1
    };
    let mut line = json!({
        "label": args.label, "scenario": args.scenario, "concurrency": args.concurrency, "requests": n, "errors": errors,
        "req_per_s": (n as f64 / elapsed * 10.0).round() / 10.0,
        "resources_per_s": ((n * per_request) as f64 / elapsed).round(),
        "p50_ms": (pct(0.50) * 100.0).round() / 100.0, "p99_ms": (pct(0.99) * 100.0).round() / 100.0,
        "bytes_per_response": bytes.checked_div(n).unwrap_or(0),
    });
    if args.scenario == "query" {
        line["path"] = json!(args.path);
    }
    println!("{line}");
    if errors > 0 {
        anyhow::bail!(
            "{errors} requests failed; the figures above count only the {n} that succeeded"
        );
    }
    Ok(())
}
