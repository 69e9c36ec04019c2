//! Bulk imports: `POST /v1/operators/{op}/imports` takes a streamed file of events (NDJSON in
//! the webhook's shape, CSV with a column mapping, or an operator's export) and sends it through
//! the ordinary event path in order, in batches the size of a webhook's, as a job whose status
//! `GET /v1/operators/{op}/imports/{job}` shows while it runs and after.
//!
//! A bad line stops the import there: the events of the lines before it are committed (those
//! of its batch included), nothing after it is read. Sending the file again with `?job=ID`
//! continues at that line (or `?from_line=N` at any line); an event committed already is a
//! `duplicate` there, as a webhook's retry is, so going over a line twice is harmless.
//!
//! Which run holds a job, and its status route: [`super::import_jobs`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::import_jobs::{self, JobView, RunningGuard, running, running_elsewhere, running_on, this_run, view};
use super::import_lines::{CSV_FIELDS, Csv, CsvLine, Lines, ndjson_event};
use super::operators::{query_params, valid_operator_id};
use super::rate_limit::Verdict;
use super::restore::{self, Action};
use super::{ApiError, AppState, auth};
use crate::event::{FieldError, IncomingEvent, now_ms};
use crate::pipeline::{Command, Disposition, IngestError};
use crate::store::imports::{ImportJob, ImportState, LineProblem};
use crate::store::records::OperatorRecord;

/// Events sent through the pipeline at once: a webhook batch's worth, so an import runs at the
/// speed of webhook batches and holds no more than one in memory.
const BATCH: usize = 500;

/// What the query asked for.
struct Request {
    format: String,
    job: Option<String>,
    from_line: Option<u64>,
    mapping: BTreeMap<String, String>,
}

fn request(query: Option<&str>, headers: &HeaderMap) -> Result<Request, ApiError> {
    let csv_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/csv"));
    let mut request = Request {
        format: if csv_body { "csv" } else { "ndjson" }.into(),
        job: None,
        from_line: None,
        mapping: BTreeMap::new(),
    };
    let mut problems = Vec::new();
    for (key, value) in query_params(query)? {
        match key.as_str() {
            "format" if ["ndjson", "csv", "export"].contains(&value.as_str()) => request.format = value,
            "format" => problems.push(FieldError::new("format", "one of ndjson, csv, export")),
            "job" if valid_operator_id(&value) => request.job = Some(value),
            "job" => {
                problems.push(FieldError::new("job", "1 to 64 of a-z, 0-9, - and _, starting with a letter or digit"))
            }
            "from_line" => match value.parse::<u64>() {
                Ok(line) if line >= 1 => request.from_line = Some(line),
                _ => problems.push(FieldError::new("from_line", "a line number, from 1")),
            },
            _ => match key.strip_prefix("map.") {
                Some(field) if CSV_FIELDS.contains(&field) && !value.is_empty() => {
                    request.mapping.insert(field.to_owned(), value);
                }
                _ => problems.push(FieldError::new(
                    &key,
                    format!(
                        "unknown parameter; known: format, job, from_line, and map.FIELD=COLUMN for FIELD one of {}",
                        CSV_FIELDS.join(", ")
                    ),
                )),
            },
        }
    }
    if !request.mapping.is_empty() && request.format != "csv" {
        problems.push(FieldError::new("format", "a column mapping (map.FIELD) is for format=csv"));
    }
    if !problems.is_empty() {
        return Err(ApiError::fields("invalid_query", problems));
    }
    Ok(request)
}

/// `POST /v1/operators/{op}/imports[?format=ndjson|csv|export&job=ID&from_line=N&map.FIELD=COLUMN]`.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/imports",
    tag = "imports",
    params(
        ("op" = String, Path, description = "operator id"),
        ("format" = Option<String>, Query, description = "ndjson (the default), csv (the default with Content-Type text/csv), or export (an operator's export, onto an operator with no history)"),
        ("job" = Option<String>, Query, description = "the job's id: a stopped job continues at the line it stopped at"),
        ("from_line" = Option<u64>, Query, description = "start at this line (1-based)"),
        ("map.id" = Option<String>, Query, description = "CSV: the column holding the event id (likewise map.type, map.customer, map.occurred_at, map.amount, map.currency, map.affiliate); a field not mapped is read from the column of its name, other columns are attributes"),
    ),
    request_body(content = String, description = "NDJSON (one webhook event per line), CSV with a header row, or an export", content_type = "application/x-ndjson"),
    responses(
        (status = 200, description = "every line was read and committed", body = JobView),
        (status = 409, description = "the job is running already: here, or (in a cluster) on the node the message names", body = super::openapi::ErrorSchema),
        (status = 503, description = "in a cluster: the operator's ledger could not be read to look for the job; nothing was started, send it again (Retry-After)", body = super::openapi::ErrorSchema),
        (status = 422, description = "a bad query parameter (the error shape), or `import_stopped`: stopped at a bad line, `details[0].index` is its number, the lines before it are committed, and `job` is the job as it stands", body = super::openapi::ErrorSchema),
        (status = 401, description = "not the operator's key nor the admin token"),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn start(
    State(state): State<Arc<AppState>>,
    Path(op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    let admin = auth::is_admin(&state, &headers);
    let request = request(query.as_deref(), &headers)?;
    let store = state.pipeline.store().clone();
    let id = request
        .job
        .clone()
        .unwrap_or_else(|| format!("imp_{}", &crate::secrets::sha256_hex(&crate::secrets::random_text())[..16]));
    let key = (operator.id.clone(), id.clone());
    if !running().lock().expect("running imports lock").insert(key.clone()) {
        return Err(ApiError::new(StatusCode::CONFLICT, "import_running", format!("import job {id:?} is running")));
    }
    let _guard = RunningGuard(key);
    if let Some(cluster) = &state.cluster {
        // The job as the ledger has it, should another node have started it a moment ago.
        cluster.apply_ledger_now(&operator.id).await.map_err(|error| {
            let message =
                format!("the cluster's ledger could not be read ({error}); nothing was started, send it again");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", message)
                .with_retry_after(std::time::Duration::from_secs(1))
        })?;
    }
    let earlier = store.import_job(&operator.id, &id)?;
    if let Some(earlier) = earlier.as_ref().filter(|earlier| running_elsewhere(&state, earlier)) {
        return Err(running_on(&id, earlier));
    }
    if let Some(earlier) = &earlier
        && earlier.format != request.format
    {
        return Err(ApiError::field("format", format!("job {id:?} imports {}; keep its format", earlier.format)));
    }
    let from_line = request.from_line.or(earlier.as_ref().map(|job| job.lines_read + 1)).unwrap_or(1);
    if request.format == "export" && from_line == 1 {
        restore::check_empty(&store, &operator)?;
    }
    let now = now_ms();
    let job = match earlier {
        Some(earlier) => ImportJob {
            state: ImportState::Running,
            from_line,
            lines_read: from_line - 1,
            stopped_at: None,
            updated_at: now,
            run: this_run(&state),
            ..earlier
        },
        None => ImportJob {
            id,
            operator: operator.id.clone(),
            format: request.format.clone(),
            state: ImportState::Running,
            from_line,
            lines_read: from_line - 1,
            accepted: 0,
            duplicate: 0,
            failed: 0,
            stopped_at: None,
            started_at: now,
            updated_at: now,
            run: this_run(&state),
        },
    };
    let mut import = Import { state: &state, operator: operator.id.clone(), admin, job, batch: Vec::new() };
    import_jobs::claim(&state, &mut import.job).await?;
    let outcome = import.run(Lines::new(body), &request).await;
    let failure = match outcome {
        Ok(()) => None,
        Err(Stop::Line(problem)) => {
            import.job.stopped_at = Some(problem);
            None
        }
        Err(Stop::Error(error)) => {
            import.job.stopped_at = Some(LineProblem {
                line: import.job.lines_read + 1,
                field: String::new(),
                problem: "the host could not store this line's batch; send the file again with this job".into(),
            });
            Some(error)
        }
    };
    import.job.state = if import.job.stopped_at.is_some() { ImportState::Stopped } else { ImportState::Done };
    import.keep().await?;
    state.pipeline.make_durable().await.map_err(ApiError::unavailable)?;
    tracing::info!(operator = %operator.id, job = %import.job.id, state = ?import.job.state, lines = import.job.lines_read, "import ended");
    if let Some(error) = failure {
        return Err(error);
    }
    let view = view(&state, &import.job);
    Ok(match &view.stopped_at {
        None => Json(view).into_response(),
        Some(stopped) => {
            let message = format!(
                "line {}: {}{}; the lines before it are committed. Fix the line and send the file again with \
                 ?job={} to continue there",
                stopped.line,
                if stopped.field.is_empty() { String::new() } else { format!("{}: ", stopped.field) },
                stopped.problem,
                view.job
            );
            let details = vec![StoppedDetail {
                index: stopped.line,
                field: stopped.field.clone(),
                problem: stopped.problem.clone(),
            }];
            let body = Stopped { error: "import_stopped", message, details, job: view };
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    })
}

/// The answer of an import stopped at a bad line: the error shape, with the job.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Stopped {
    /// `import_stopped`.
    error: &'static str,
    message: String,
    /// One entry: the line.
    details: Vec<StoppedDetail>,
    job: JobView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoppedDetail {
    /// The line's number (1-based).
    index: u64,
    field: String,
    problem: String,
}

/// Why an import stopped before the end of the body.
pub(super) enum Stop {
    /// At a line it could not take; everything before it is committed.
    Line(LineProblem),
    /// The host could not go on (storage): the request's answer is this error.
    Error(ApiError),
}

pub(super) fn at_line(line: u64, field: impl Into<String>, problem: impl Into<String>) -> Stop {
    Stop::Line(LineProblem { line, field: field.into(), problem: problem.into() })
}

pub(super) struct Import<'a> {
    pub(super) state: &'a AppState,
    pub(super) operator: String,
    /// Whether the admin sent it: an export's operator config is the admin's to set.
    pub(super) admin: bool,
    job: ImportJob,
    /// Events read and not yet sent, with their line numbers.
    batch: Vec<(u64, IncomingEvent)>,
}

impl Import<'_> {
    async fn run(&mut self, mut lines: Lines, request: &Request) -> Result<(), Stop> {
        let currency = self.operator_record()?.currency;
        let mut csv = None;
        let from = self.job.from_line;
        let mut restore = restore::Restore::default();
        loop {
            let next = match lines.next().await {
                Ok(next) => next,
                Err(problem) => {
                    self.flush().await?;
                    return Err(Stop::Line(problem));
                }
            };
            let Some((number, line)) = next else { break };
            if request.format == "csv" && number == 1 {
                let header =
                    Csv::new(&line, &request.mapping).map_err(|(field, problem)| at_line(1, field, problem))?;
                csv = Some(header);
                if from <= 1 {
                    self.job.lines_read = 1;
                }
                continue;
            }
            if number < from {
                continue;
            }
            let parsed = match (request.format.as_str(), csv.as_mut()) {
                ("csv", Some(csv)) => match csv.line(number, line, &currency) {
                    Ok(CsvLine::Event(first, event)) => Ok(Some((first, *event))),
                    Ok(CsvLine::Incomplete) => continue,
                    Ok(CsvLine::Blank) => Ok(None),
                    Err((first, field, problem)) => Err(at_line(first, field, problem)),
                },
                ("export", _) => match restore.line(number, &line, &currency) {
                    Ok(Action::Event(event)) => Ok(Some((number, *event))),
                    Ok(Action::Blank) => Ok(None),
                    Ok(action) => {
                        self.flush().await?;
                        restore.apply(self, number, action).await?;
                        self.job.lines_read = number;
                        continue;
                    }
                    Err(stop) => Err(stop),
                },
                _ => ndjson_event(&line, &currency)
                    .map(|event| event.map(|event| (number, event)))
                    .map_err(|(field, problem)| at_line(number, field, problem)),
            };
            match parsed {
                Ok(Some(event)) => {
                    self.batch.push(event);
                    if self.batch.len() >= self.batch_size()? {
                        self.flush().await?;
                        self.job.lines_read = number;
                    }
                }
                Ok(None) if self.batch.is_empty() => self.job.lines_read = number,
                Ok(None) => {}
                Err(stop) => {
                    self.flush().await?;
                    return Err(stop);
                }
            }
        }
        if request.format == "export" && !restore.ended() {
            self.flush().await?;
            return Err(at_line(
                lines.count() + 1,
                "kind",
                "the file ends without its `end` line: it was cut off; export it again",
            ));
        }
        if let Some(first) = csv.as_ref().and_then(Csv::unclosed) {
            self.flush().await?;
            return Err(at_line(first, "", "a quoted field is not closed by the end of the file"));
        }
        self.flush().await?;
        self.job.lines_read = self.job.lines_read.max(lines.count());
        Ok(())
    }

    pub(super) fn operator_record(&self) -> Result<OperatorRecord, Stop> {
        self.state
            .pipeline
            .store()
            .operator(&self.operator)
            .map_err(|error| Stop::Error(error.into()))?
            .ok_or_else(|| Stop::Error(ApiError::not_found(format!("no operator {:?}", self.operator))))
    }

    /// A webhook batch, or the operator's events per second if that is fewer.
    fn batch_size(&self) -> Result<usize, Stop> {
        let per_second = self.operator_record()?.limits.events_per_second.map_or(BATCH, |rate| rate as usize);
        Ok(per_second.clamp(1, BATCH))
    }

    /// Sends the events read so far through the pipeline. On a refusal of one of them, the ones
    /// before it are sent alone, and the import stops at its line.
    pub(super) async fn flush(&mut self) -> Result<(), Stop> {
        let mut batch = std::mem::take(&mut self.batch);
        // Once an event is refused, the ones before it are sent alone and the import stops at it.
        let mut stop = None;
        while !batch.is_empty() {
            let operator = self.operator_record()?;
            self.wait_for_rate(&operator, batch.len()).await;
            let events: Vec<IncomingEvent> = batch.iter().map(|(_, event)| event.clone()).collect();
            let refused = match self.state.pipeline.ingest(&operator, events).await {
                Ok(outcomes) => {
                    let conflict = outcomes.iter().position(|outcome| outcome.disposition == Disposition::Conflict);
                    for outcome in &outcomes[..conflict.unwrap_or(outcomes.len())] {
                        match outcome.disposition {
                            Disposition::Accepted => self.job.accepted += 1,
                            Disposition::Duplicate => self.job.duplicate += 1,
                            Disposition::Failed => self.job.failed += 1,
                            Disposition::Conflict => {}
                        }
                    }
                    match conflict {
                        None => {
                            self.job.lines_read = batch.last().map_or(self.job.lines_read, |(line, _)| *line);
                            self.save().await?;
                            break;
                        }
                        Some(index) => {
                            let (line, event) = &batch[index];
                            return Err(at_line(*line, "id", conflict_problem(&event.event.id)));
                        }
                    }
                }
                Err(IngestError::Invalid(problems)) => {
                    let first = problems.into_iter().next().unwrap_or_else(|| FieldError::new("", "refused"));
                    (first.index.unwrap_or(0), first.field, first.problem)
                }
                Err(IngestError::Conflict(ids)) => {
                    let index = batch.iter().position(|(_, event)| ids.contains(&event.event.id)).unwrap_or(0);
                    (index, "id".to_owned(), conflict_problem(&batch[index].1.event.id))
                }
                Err(IngestError::QuotaExceeded { operator, event, refused }) => {
                    let index = event.and_then(|id| batch.iter().position(|(_, e)| e.event.id == id)).unwrap_or(0);
                    let problem = format!(
                        "operator {operator:?} keeps {} bytes and its quota is {} bytes; the platform admin raises \
                         it with PUT /v1/operators/{operator}/limits",
                        refused.used, refused.quota
                    );
                    (index, "stored_bytes".to_owned(), problem)
                }
                Err(error) => return Err(Stop::Error(super::events::ingest_error(error))),
            };
            let (index, field, problem) = refused;
            stop = Some(at_line(batch[index].0, field, problem));
            batch.truncate(index);
        }
        match stop {
            Some(stop) => Err(stop),
            None => Ok(()),
        }
    }

    /// Waits out the operator's events-per-second limit rather than failing the import on it.
    async fn wait_for_rate(&self, operator: &OperatorRecord, events: usize) {
        for _ in 0..600 {
            match self.state.rate_limits.check(operator, events) {
                Verdict::Allowed => return,
                Verdict::Refused { retry_after, .. } => {
                    tokio::time::sleep(retry_after.min(std::time::Duration::from_secs(1))).await;
                }
            }
        }
    }

    pub(super) async fn save(&mut self) -> Result<(), Stop> {
        self.keep().await.map_err(Stop::Error)
    }

    /// Keeps the job's progress in the operator's order (in a cluster, through its log, so that
    /// every node's view shows it).
    async fn keep(&mut self) -> Result<(), ApiError> {
        self.job.updated_at = now_ms();
        import_jobs::in_order(self.state, &self.job, Command::PutImportJob { job: self.job.clone() }).await?;
        Ok(())
    }
}

fn conflict_problem(id: &str) -> String {
    format!("event id {id:?} is stored already with other content; an id names one event forever")
}
