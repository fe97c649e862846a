//! `$viewdefinition-run` (SQL on FHIR v2): the rows of a ViewDefinition over the resources the
//! caller sees, as of one change sequence, for the warehouse and monitor roles (a monitor's
//! rows come from its sites only, as its searches do). The view is sent inline
//! (`viewResource`) or named (`viewReference` = `ViewDefinition/<name>` of the study's views);
//! rows come out as JSON, NDJSON or CSV, page by page so that a large table streams.

use serde_json::Value;
use trialbridge_auth::Interaction;
use trialbridge_fhir::IssueType;
use trialbridge_storage::Role;
use trialbridge_views::ViewDefinition;

use crate::error::{Status, StoreError};
use crate::fhir::StoreState;
use crate::security::Caller;

/// Resources read per page.
const PAGE: usize = 1000;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// RFC 4180 CSV (with a header line unless `header` is false).
    Csv,
}

impl RowFormat {
    /// The media type of the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            RowFormat::Json => "application/json",
            RowFormat::Ndjson => "application/x-ndjson",
            RowFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    fn parse(code: &str) -> Option<Self> {
        match code {
            "json" | "application/json" => Some(RowFormat::Json),
            "ndjson" | "application/x-ndjson" | "application/fhir+ndjson" => {
                Some(RowFormat::Ndjson)
            }
            "csv" | "text/csv" => Some(RowFormat::Csv),
            _ => None,
        }
    }
}

fn bad(msg: impl Into<String>, at: &str) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Invalid, msg).at(at)
}

/// A run under way: the view, what to read, and where it is.
pub struct ViewRun {
    view: ViewDefinition,
    names: Vec<String>,
    /// The output format.
    pub format: RowFormat,
    header: bool,
    limit: Option<usize>,
    since_us: Option<i64>,
    patient: Option<String>,
    /// Inline resources (`resource` parameters) instead of the store's.
    inline: Option<Vec<Value>>,
    as_of: i64,
    after: Option<String>,
    rows: usize,
    started: bool,
    done: bool,
    caller: Caller,
}

/// The value of a Parameters parameter (`valueString`, `valueCode`, ...).
fn value_of(p: &Value) -> Option<&Value> {
    p.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| v)
}

/// A study view by name (`ViewDefinition/observation`).
fn study_view(reference: &str) -> Option<Value> {
    let name = reference
        .strip_prefix("ViewDefinition/")
        .unwrap_or(reference);
    trialbridge_study::VIEWS
        .iter()
        .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok())
        .find(|v| v["name"] == name)
}

/// Microseconds since the epoch of an instant.
fn instant_us(text: &str) -> Option<i64> {
    let t = trialbridge_fhir::instant::parse(text)?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

impl ViewRun {
    /// Reads the operation's Parameters (POST) and checks that the caller may run the view;
    /// `accept` (the Accept header) chooses the format when `_format` does not.
    pub async fn start(
        s: &StoreState,
        caller: &Caller,
        params: &Value,
        named: Option<&str>,
        accept: Option<&str>,
    ) -> Result<ViewRun, StoreError> {
        caller.require_role(
            &[Role::Warehouse, Role::Monitor, Role::System],
            "run a ViewDefinition",
        )?;
        if params["resourceType"] != "Parameters" {
            return Err(bad(
                "$viewdefinition-run takes a Parameters resource",
                "Parameters",
            ));
        }
        let mut def = named.map(|n| {
            study_view(n).ok_or_else(|| {
                StoreError::new(
                    Status::NotFound,
                    IssueType::NotFound,
                    format!("no study view named {n}"),
                )
            })
        });
        let (mut format, mut header, mut limit, mut since_us, mut patient) =
            (None, true, None, None, None);
        let mut inline: Option<Vec<Value>> = None;
        for (i, p) in params["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("Parameters.parameter[{i}]");
            let name = p["name"].as_str().unwrap_or("");
            let value = value_of(p);
            match name {
                "viewResource" => {
                    def = Some(
                        p.get("resource")
                            .cloned()
                            .ok_or_else(|| bad("viewResource needs a resource", &at)),
                    )
                }
                "viewReference" => {
                    let r = value.and_then(|v| v["reference"].as_str()).unwrap_or("");
                    def = Some(study_view(r).ok_or_else(|| {
                        StoreError::new(
                            Status::NotFound,
                            IssueType::NotFound,
                            format!("viewReference {r:?} names none of the study's views"),
                        )
                        .at(&at)
                    }));
                }
                "_format" => {
                    let code = value.and_then(Value::as_str).unwrap_or("");
                    format = Some(RowFormat::parse(code).ok_or_else(|| {
                        bad(format!("_format {code:?}: json, ndjson or csv"), &at)
                    })?);
                }
                "header" => header = value.and_then(Value::as_bool).unwrap_or(true),
                "_limit" | "_count" => {
                    limit = Some(
                        value
                            .and_then(Value::as_u64)
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad("_limit must be a positive integer", &at))?
                            as usize,
                    )
                }
                "_since" => {
                    let text = value.and_then(Value::as_str).unwrap_or("");
                    since_us = Some(
                        instant_us(text)
                            .ok_or_else(|| bad(format!("_since {text:?} is not an instant"), &at))?,
                    );
                }
                "patient" => {
                    patient = Some(
                        value
                            .and_then(|v| v["reference"].as_str())
                            .filter(|r| r.starts_with("Patient/"))
                            .ok_or_else(|| bad("patient must be a Reference to a Patient", &at))?
                            .to_string(),
                    )
                }
                "resource" => inline
                    .get_or_insert_with(Vec::new)
                    .extend(p.get("resource").cloned()),
                other => {
                    return Err(StoreError::new(
                        Status::BadRequest,
                        IssueType::NotSupported,
                        format!("parameter {other:?} is not supported by $viewdefinition-run (viewResource, viewReference, _format, header, _limit or _count, _since, patient, resource are)"),
                    )
                    .at(&at))
                }
            }
        }
        let def = def.ok_or_else(|| {
            bad(
                "a view is needed: viewResource or viewReference",
                "Parameters.parameter",
            )
        })??;
        let view = ViewDefinition::parse(&def).map_err(|e| {
            StoreError::new(Status::BadRequest, IssueType::Invalid, e.to_string())
                .at(format!("ViewDefinition.{}", e.element()))
        })?;
        caller.require(&view.resource, Interaction::Search)?;
        let as_of = s.store.last_seq(&caller.ctx).await?;
        Ok(ViewRun {
            names: view.columns().iter().map(|c| c.name.clone()).collect(),
            view,
            format: format
                .or_else(|| {
                    accept?
                        .split(',')
                        .find_map(|a| RowFormat::parse(a.split(';').next()?.trim()))
                })
                .unwrap_or(RowFormat::Json),
            header,
            limit,
            since_us,
            patient,
            inline,
            as_of,
            after: None,
            rows: 0,
            started: false,
            done: false,
            caller: caller.clone(),
        })
    }

    /// Whether `r` belongs to the asked patient (the Patient itself, or its subject / patient
    /// / individual reference).
    fn of_patient(&self, r: &Value) -> bool {
        let Some(p) = &self.patient else { return true };
        if r["resourceType"] == "Patient" {
            return r["id"]
                .as_str()
                .is_some_and(|id| p.strip_prefix("Patient/") == Some(id));
        }
        ["subject", "patient", "individual"]
            .iter()
            .any(|k| r[k]["reference"].as_str() == Some(p))
    }

    /// The next piece of the answer, or `None` when it is complete.
    pub async fn next_chunk(&mut self, s: &StoreState) -> Result<Option<Vec<u8>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            match self.format {
                RowFormat::Json => out.push(b'['),
                RowFormat::Csv if self.header => {
                    let mut w = csv::Writer::from_writer(&mut out);
                    w.write_record(&self.names).map_err(internal)?;
                    w.flush().map_err(internal)?;
                }
                _ => {}
            }
        }
        let resources: Vec<Value> = match self.inline.take() {
            Some(r) => {
                self.done = true;
                r
            }
            None => {
                let page = s
                    .store
                    .snapshot_page(
                        &self.caller.ctx,
                        &self.view.resource,
                        self.as_of,
                        self.after.clone(),
                        PAGE,
                    )
                    .await?;
                match page.last() {
                    Some(last) => self.after = Some(last.id.clone()),
                    None => self.done = true,
                }
                page.into_iter()
                    .filter(|v| self.since_us.is_none_or(|since| v.last_updated_us > since))
                    .filter_map(|v| v.body.and_then(|b| serde_json::from_str(&b).ok()))
                    .collect()
            }
        };
        for r in &resources {
            if !self.of_patient(r) {
                continue;
            }
            let rows = self.view.rows(r).map_err(|e| {
                StoreError::new(Status::Unprocessable, IssueType::Processing, e.to_string())
            })?;
            for row in rows {
                if self.limit.is_some_and(|l| self.rows >= l) {
                    self.done = true;
                    break;
                }
                self.write_row(&mut out, row)?;
                self.rows += 1;
            }
        }
        if self.done && self.format == RowFormat::Json {
            out.extend_from_slice(b"]\n");
        }
        Ok(Some(out))
    }

    fn write_row(&self, out: &mut Vec<u8>, row: Vec<Value>) -> Result<(), StoreError> {
        match self.format {
            RowFormat::Csv => {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| trialbridge_views::cell_text(v).unwrap_or_default())
                    .collect();
                let mut w = csv::Writer::from_writer(out);
                w.write_record(&cells).map_err(internal)?;
                w.flush().map_err(internal)?;
            }
            RowFormat::Json | RowFormat::Ndjson => {
                if self.format == RowFormat::Json && self.rows > 0 {
                    out.push(b',');
                }
                let obj: serde_json::Map<String, Value> =
                    self.names.iter().cloned().zip(row).collect();
                out.extend_from_slice(Value::Object(obj).to_string().as_bytes());
                if self.format == RowFormat::Ndjson {
                    out.push(b'\n');
                }
            }
        }
        Ok(())
    }
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(Status::InternalError, IssueType::Exception, e.to_string())
}
