//! The server's view of the engine's `state.db`: the queries are the
//! engine's ([`kiln_engine::store::StateReader`]); here are only the
//! shapes the API and the UI give what they return.

use serde::Serialize;
use serde_json::Value;

pub use kiln_engine::store::StateReader;

use crate::error::ServerError;

/// One log entry of the build's log as the API numbers it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Position in the build's log (`Last-Event-ID`): the attempt's
    /// `log_base` plus the engine's gap-free `seq`.
    pub id: i64,
    pub ts: String,
    pub attempt: i64,
    pub job: String,
    pub step: String,
    pub phase: String,
    pub stream: String,
    pub text: String,
}

/// What the API shows of an attempt's records.
pub trait AttemptRecords {
    /// Log lines of attempt `attempt` (engine id `engine_id`, log numbering
    /// from `log_base`) with `seq > after_seq`, at most `limit`.
    fn log_lines(
        &self,
        engine_id: &str,
        attempt: i64,
        log_base: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, ServerError>;
    /// Jobs with their steps, as JSON.
    fn jobs_json(&self, engine_id: &str) -> Result<Vec<Value>, ServerError>;
    /// Artifacts with their output type and scan verdict, as JSON.
    fn artifacts_json(&self, engine_id: &str) -> Result<Vec<Value>, ServerError>;
}

fn json_rows<T: Serialize>(rows: Vec<T>) -> Vec<Value> {
    rows.into_iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).collect()
}

impl AttemptRecords for StateReader {
    fn log_lines(
        &self,
        engine_id: &str,
        attempt: i64,
        log_base: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, ServerError> {
        Ok(self
            .logs_after(engine_id, after_seq, limit)?
            .into_iter()
            .map(|e| LogLine {
                id: log_base + e.seq as i64,
                ts: e.ts,
                attempt,
                job: e.job,
                step: e.step,
                phase: e.phase,
                stream: e.stream.as_str().to_string(),
                text: e.text,
            })
            .collect())
    }

    fn jobs_json(&self, engine_id: &str) -> Result<Vec<Value>, ServerError> {
        Ok(json_rows(self.jobs_with_steps(engine_id)?))
    }

    fn artifacts_json(&self, engine_id: &str) -> Result<Vec<Value>, ServerError> {
        Ok(json_rows(self.artifacts(engine_id)?))
    }
}
