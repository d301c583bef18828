//! The control socket's protocol: JSON lines over a Unix socket, version [`PROTOCOL_VERSION`].
//!
//! Each request is one line `{"v":1,"op":"...", ...}`; each gets exactly one reply line
//! `{"v":1,"ok":true,"result":...}` or `{"v":1,"ok":false,"error":"...","code":"..."}`. After a
//! reply to `subscribe`, the connection carries event lines `{"v":1,"event":{"kind":"...",...}}`
//! until either side closes it. A request with another `v` gets an error reply naming both
//! versions. Every error reply carries an [`ErrorCode`] in `code`; after `line_too_long`,
//! `timeout` and `too_many_connections` the connection is closed.

use serde::{Deserialize, Serialize};

use blockdev::DiskInfo;

use crate::daemon::matching::DiskStatus;
use crate::job::runner::StepProgress;
use crate::job::{Job, JobId};

/// Version of the protocol spoken by this agent.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version.
    pub v: u32,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

/// Operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Everything at a glance: a [`Status`].
    Status,
    /// Queue a job; replies with the [`Job`].
    JobAdd {
        /// Service ticket.
        ticket: String,
        /// Image `NAME@VERSION`.
        image: String,
        /// Staged dataset to migrate.
        #[serde(default)]
        data: Option<String>,
        /// Bay to wait on.
        #[serde(default)]
        bay: Option<String>,
        /// Serial of the expected disk.
        #[serde(default)]
        serial: Option<String>,
        /// Why the dataset may be one ingested for another ticket (audited).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dataset_of_other_ticket: Option<String>,
    },
    /// All jobs: a list of [`Job`].
    JobList,
    /// One [`Job`].
    JobShow {
        /// Job id.
        id: String,
    },
    /// Cancel a job (staged data is kept).
    JobCancel {
        /// Job id.
        id: String,
    },
    /// Retry a failed, cancelled or interrupted job (see `Agent::retry`).
    JobRetry {
        /// Job id.
        id: String,
    },
    /// Fail a job that is not running, with a reason (`tek image rm --force` of its image).
    JobFail {
        /// Job id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The custody records changed (a withdrawal): the agent re-reads them and cancels, or
    /// stops before migration, every job whose dataset may no longer be migrated. Replies with
    /// the ids of the jobs affected.
    CustodyChanged,
    /// Stream [`Event`]s on this connection.
    Subscribe,
}

impl Op {
    /// Whether the request changes the bench (needs [`crate::server::access::may_change`]); every
    /// other request only reads.
    pub fn is_mutating(&self) -> bool {
        match self {
            Op::JobAdd { .. }
            | Op::JobCancel { .. }
            | Op::JobRetry { .. }
            | Op::JobFail { .. }
            | Op::CustodyChanged => true,
            Op::Status | Op::JobList | Op::JobShow { .. } | Op::Subscribe => false,
        }
    }

    /// The wire name (`job_add`...), for logs: never the fields, which may hold free text.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::JobAdd { .. } => "job_add",
            Op::JobList => "job_list",
            Op::JobShow { .. } => "job_show",
            Op::JobCancel { .. } => "job_cancel",
            Op::JobRetry { .. } => "job_retry",
            Op::JobFail { .. } => "job_fail",
            Op::CustodyChanged => "custody_changed",
            Op::Subscribe => "subscribe",
        }
    }
}

/// Why a request failed, in every error reply (`code`), so a client branches on it and never
/// on the sentence. Old clients ignore the field; a client that meets a code it does not know
/// reads it as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is no request of this protocol (not JSON, unknown op, missing fields).
    BadRequest,
    /// The request names another protocol version than the agent's.
    UnsupportedVersion,
    /// A field's value is refused (a ticket that is not an id, an unknown bay, an image that
    /// is not `NAME@VERSION`, neither or both of bay and serial).
    InvalidArgument,
    /// No job with that id.
    NotFound,
    /// The job's state does not allow it (running, already finished, past its verified
    /// migration, not retriable).
    Conflict,
    /// A new job's checks refused it (image missing or not allowed, dataset not staged or of
    /// another ticket), or its image was removed while it was added.
    Rejected,
    /// The agent failed doing it (journal I/O, a crashed handler).
    Internal,
    /// The peer may not make this request (see `access.rs`).
    Forbidden,
    /// The request line exceeded [`crate::server::conn::Limits::max_line`]; the connection is closed.
    LineTooLong,
    /// No request in time, or a request line not finished in time; the connection is closed.
    Timeout,
    /// The peer's uid (or everyone together) holds the most connections allowed; closed.
    TooManyConnections,
    /// A code this client does not know (from a newer agent).
    #[serde(other)]
    Unknown,
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u32,
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of refusal, when a client may branch on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl Reply {
    /// A success reply.
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
            code: None,
        }
    }
    /// A failure reply: the sentence for people, the code for programs.
    pub fn refused(code: ErrorCode, msg: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(msg.into()),
            code: Some(code),
        }
    }
}

/// An event line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// Protocol version.
    pub v: u32,
    /// The event.
    pub event: Event,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A disk appeared (or changed).
    DeviceArrived {
        /// The disk.
        disk: Box<DiskInfo>,
        /// Its bay.
        bay: Option<String>,
    },
    /// A disk went away.
    DeviceLeft {
        /// Kernel name.
        name: String,
    },
    /// What the agent does with a disk changed.
    DiskStatus {
        /// Kernel name.
        name: String,
        /// The new status.
        status: DiskStatus,
    },
    /// A job changed state (after it was journaled).
    JobState {
        /// The job record.
        job: Box<Job>,
    },
    /// Progress of a running job.
    JobProgress {
        /// Job id.
        id: JobId,
        /// Progress.
        progress: StepProgress,
    },
}

/// One bay in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BayView {
    /// Bay name.
    pub name: String,
    /// What it matches (port path or backing-file glob).
    pub matcher: String,
    /// A provisioning bay's image.
    pub default_image: Option<String>,
    /// The disk in it, if any.
    pub disk: Option<String>,
    /// One line: "empty", "waiting for a job", a refusal reason, "running j-...", "done...".
    pub state: String,
    /// The job on it.
    pub job: Option<JobId>,
    /// Live progress of that job.
    pub progress: Option<StepProgress>,
}

/// One disk in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskView {
    /// The disk.
    pub disk: DiskInfo,
    /// Its bay.
    pub bay: Option<String>,
    /// What the agent does with it.
    pub status: DiskStatus,
}

/// The reply to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// One-line summary (also sent as the systemd STATUS).
    pub summary: String,
    /// Every configured bay.
    pub bays: Vec<BayView>,
    /// Every disk present.
    pub disks: Vec<DiskView>,
    /// Jobs not yet finished, plus the last finished ones.
    pub jobs: Vec<Job>,
    /// Live progress per running job id.
    pub progress: std::collections::BTreeMap<JobId, StepProgress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request =
            serde_json::from_str(r#"{"v":1,"op":"job_add","ticket":"T","image":"a@1","bay":"b"}"#)
                .unwrap();
        assert_eq!(
            r.op,
            Op::JobAdd {
                ticket: "T".into(),
                image: "a@1".into(),
                data: None,
                bay: Some("b".into()),
                serial: None,
                dataset_of_other_ticket: None,
            }
        );
        let s = serde_json::to_string(&Request {
            v: 1,
            op: Op::JobCancel { id: "j-1".into() },
        })
        .unwrap();
        assert_eq!(s, r#"{"v":1,"op":"job_cancel","id":"j-1"}"#);
    }

    #[test]
    fn refusal_codes_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&Reply::refused(ErrorCode::Forbidden, "no")).unwrap(),
            r#"{"v":1,"ok":false,"error":"no","code":"forbidden"}"#
        );
        let r: Reply =
            serde_json::from_str(r#"{"v":1,"ok":false,"error":"x","code":"from_the_future"}"#)
                .unwrap();
        assert_eq!(r.code, Some(ErrorCode::Unknown));
        assert!(Op::JobCancel { id: "j".into() }.is_mutating());
        assert!(
            Op::JobFail {
                id: "j".into(),
                reason: "r".into()
            }
            .is_mutating()
        );
        assert!(!Op::Subscribe.is_mutating());
    }

    #[test]
    fn unknown_op_is_a_parse_error() {
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"format_c"}"#).is_err());
    }

    #[test]
    fn reply_and_event_wire_format() {
        assert_eq!(
            serde_json::to_string(&Reply::refused(ErrorCode::NotFound, "no job j-1")).unwrap(),
            r#"{"v":1,"ok":false,"error":"no job j-1","code":"not_found"}"#
        );
        // An old agent's reply without a code still parses; a newer agent's unknown code is
        // `Unknown`, never a parse error.
        let old: Reply = serde_json::from_str(r#"{"v":1,"ok":false,"error":"no"}"#).unwrap();
        assert_eq!(old.code, None);
        let newer: Reply =
            serde_json::from_str(r#"{"v":1,"ok":false,"error":"x","code":"frobnicated"}"#).unwrap();
        assert_eq!(newer.code, Some(ErrorCode::Unknown));
        let e = EventLine {
            v: 1,
            event: Event::DeviceLeft {
                name: "loop3".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"v":1,"event":{"kind":"device_left","name":"loop3"}}"#
        );
    }
}
