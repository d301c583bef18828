//! A job: one ticket's image (and optionally client data) going onto one disk, and the states it
//! moves through. The job record is what the journal persists after every step, so it carries
//! everything a restarted agent needs to resume, and everything the service report shows.
//!
//! ```text
//! queued -> claimed -> writing -> image_verified -> migrating -> data_verified -> wiping
//!        -> reporting -> done
//!  (no data: image_verified -> reporting)
//! any running state -> interrupted (disk pulled; resumes when the same disk returns)
//!                   -> failed (a step failed; `tek job retry` re-queues it)
//!                   -> cancelled (`tek job cancel`; staged client data is never wiped by it)
//! ```

use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobResults};

/// Version of the journaled job record.
pub const JOB_FORMAT: u32 = 1;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a disk.
    Queued,
    /// A disk was matched and checked; the job owns it.
    Claimed,
    /// The image is being written and read back.
    Writing,
    /// Image written and verified (first MiB included).
    ImageVerified,
    /// Client data is being restored onto the data partition.
    Migrating,
    /// Client data restored and read back; staging still holds its copy.
    DataVerified,
    /// The staging copy is being wiped.
    Wiping,
    /// Writing the service report and audit entries.
    Reporting,
    /// Finished; the disk is safe to remove.
    Done,
    /// The disk went away mid-job; resumes at `resume_from` when it returns.
    Interrupted,
    /// A step failed (see `error`).
    Failed,
    /// Cancelled by a technician.
    Cancelled,
}

impl JobState {
    /// The state in words, as the service report and the bench board say it
    /// (`image_verified` -> "image written and verified").
    pub fn words(self) -> &'static str {
        match self {
            JobState::Queued => "waiting for a disk",
            JobState::Claimed => "disk checked and claimed",
            JobState::Writing => "writing the image",
            JobState::ImageVerified => "image written and verified",
            JobState::Migrating => "restoring the client data",
            JobState::DataVerified => "client data restored and verified",
            JobState::Wiping => "wiping the staging copy",
            JobState::Reporting => "writing the report",
            JobState::Done => "done",
            JobState::Interrupted => "interrupted: the disk was removed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No further work happens without a technician (`retry`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }

    /// The job holds (or held, before a crash) a disk and has work left.
    pub fn is_active(self) -> bool {
        !self.is_terminal() && self != JobState::Queued && self != JobState::Interrupted
    }

    /// Lower-case name as shown to technicians.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Claimed => "claimed",
            JobState::Writing => "writing",
            JobState::ImageVerified => "image_verified",
            JobState::Migrating => "migrating",
            JobState::DataVerified => "data_verified",
            JobState::Wiping => "wiping",
            JobState::Reporting => "reporting",
            JobState::Done => "done",
            JobState::Interrupted => "interrupted",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The step to (re)start from after a crash in this state. A step is only recorded as done
    /// once its result was verified, so a crash inside a step redoes that whole step:
    /// rewriting the image, restoring again over the partial restore (staging still holds the
    /// data: it is only wiped after `data_verified` was journaled), wiping again.
    pub fn resume_point(self) -> JobState {
        match self {
            JobState::Claimed | JobState::Writing => JobState::Writing,
            s => s,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which disk a job wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobTarget {
    /// Whatever disk is plugged into this bay.
    Bay(String),
    /// The disk with this serial number, on an allowed bus, in a bay that takes serial jobs
    /// (never a disk outside every bay).
    Serial(String),
}

impl std::fmt::Display for JobTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobTarget::Bay(b) => write!(f, "bay {b}"),
            JobTarget::Serial(s) => write!(f, "serial {s}"),
        }
    }
}

/// The disk a job claimed, as identified at claim time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Kernel name at claim time (`sdb`, `loop7`); may change on re-plug.
    pub name: String,
    /// Device node at claim time.
    pub dev_path: String,
    /// Stable identity used to recognise the disk when it comes back: serial, else WWN, else
    /// the loop backing file.
    pub identity: String,
    /// How the disk was attached, stored as its name (`"usb"`, `"virtual"`), as always.
    pub bus: blockdev::Bus,
    /// Vendor and model.
    pub model: String,
    /// Serial number, if the disk reports one.
    pub serial: Option<String>,
    /// World-wide name, if the disk reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Bay it sat in, if any.
    pub bay: Option<String>,
    /// The kernel's `diskseq` at claim time (tells a loop device's attachments apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
}

/// One state change with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: JobState,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Why, when not the normal flow (interruption reason, error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A job record, exactly as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Always [`JOB_FORMAT`] when written by this version.
    pub format: u32,
    /// Job id (`j-` + 32 hex digits; older records: 8).
    pub id: JobId,
    /// The service ticket.
    pub ticket: String,
    /// Image `NAME@VERSION`.
    pub image: String,
    /// Staged client dataset to migrate, if any.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The technician's reason for migrating a dataset ingested for another ticket (`tek job
    /// add --dataset-of-other-ticket REASON`); without it the dataset's ticket must be the
    /// job's. Audited (without the free text) when the job is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_of_other_ticket: Option<String>,
    /// The disk it wants.
    pub target: JobTarget,
    /// Current state.
    pub state: JobState,
    /// Where an interrupted job resumes.
    #[serde(default)]
    pub resume_from: Option<JobState>,
    /// The claimed disk.
    #[serde(default)]
    pub device: Option<DeviceRecord>,
    /// Last error, for failed jobs.
    #[serde(default)]
    pub error: Option<String>,
    /// Every state change.
    pub history: Vec<Transition>,
    /// Results per step.
    #[serde(default)]
    pub results: JobResults,
    /// Created automatically by a provisioning bay.
    #[serde(default)]
    pub provisioning: bool,
}

impl Job {
    /// A new queued job.
    pub fn new(ticket: &str, image: &str, dataset: Option<String>, target: JobTarget) -> Job {
        let mut j = Job {
            format: JOB_FORMAT,
            id: JobId::random(),
            ticket: ticket.to_string(),
            image: image.to_string(),
            dataset,
            dataset_of_other_ticket: None,
            target,
            state: JobState::Queued,
            resume_from: None,
            device: None,
            error: None,
            history: Vec::new(),
            results: JobResults::default(),
            provisioning: false,
        };
        j.set_state(JobState::Queued, None);
        j
    }

    /// Moves to `state`, recording the time and an optional note.
    pub fn set_state(&mut self, state: JobState, note: Option<String>) {
        self.state = state;
        self.history.push(Transition {
            state,
            at: client_data::dataset::rfc3339(time::OffsetDateTime::now_utc()),
            note,
        });
    }

    /// Marks the job cancelled by a technician. Cancelling never wipes staged client data, and
    /// the note says so wherever the job is shown (only for a job that has a dataset).
    pub fn cancel(&mut self) {
        let note = if self.dataset.is_some() {
            "cancelled by technician; staged client data kept"
        } else {
            "cancelled by technician"
        };
        self.set_state(JobState::Cancelled, Some(note.into()));
    }

    /// True when the job's client data was verified on its disk, so only the staging wipe and
    /// the report remain: these are finished, never cancelled (the staging copy must not
    /// outlive its verified copy).
    pub fn past_verified_migration(&self) -> bool {
        let at = match self.state {
            JobState::Interrupted => self.resume_from.unwrap_or(JobState::Queued),
            s => s,
        };
        matches!(
            at,
            JobState::DataVerified | JobState::Wiping | JobState::Reporting
        )
    }

    /// Marks the job cancelled because its client data may no longer be migrated (the client
    /// withdrew); `why` says what the custody records show.
    pub fn cancel_withdrawn(&mut self, why: &str) {
        self.error = None;
        self.set_state(
            JobState::Cancelled,
            Some(format!("cancelled before migration: {why}")),
        );
    }

    /// Marks the job interrupted (disk gone or agent stopping), remembering where to resume.
    pub fn interrupt(&mut self, why: &str) {
        if self.state.is_terminal() || self.state == JobState::Interrupted {
            return;
        }
        let from = if self.state == JobState::Queued {
            JobState::Queued
        } else {
            self.state.resume_point()
        };
        self.resume_from = Some(from);
        self.set_state(JobState::Interrupted, Some(why.to_string()));
    }

    /// The state to run next when this job is (re)started on its disk.
    pub fn next_step(&self) -> JobState {
        match self.state {
            JobState::Interrupted => self
                .resume_from
                .map(JobState::resume_point)
                .unwrap_or(JobState::Writing),
            JobState::Queued => JobState::Claimed,
            s => s.resume_point(),
        }
    }

    /// Where `tek job retry` restarts a failed, cancelled or interrupted job: the step it was
    /// in when it stopped (a step is only journaled as done once verified, so redoing the step
    /// that stopped is safe), or `None` to start over. It starts over when it never got past
    /// the write (nothing verified to keep: the image is rewritten, on any disk in the bay)
    /// and when it never claimed a disk.
    pub fn retry_point(&self) -> Option<JobState> {
        self.device.as_ref()?;
        let last = if self.state == JobState::Interrupted {
            self.resume_from?
        } else {
            self.history
                .iter()
                .rev()
                .map(|t| t.state)
                .find(|s| s.is_active())?
        };
        match last.resume_point() {
            JobState::Claimed | JobState::Writing | JobState::Queued => None,
            s => Some(s),
        }
    }

    /// Time of the first entry into `state`.
    pub fn entered(&self, state: JobState) -> Option<&str> {
        self.history
            .iter()
            .find(|t| t.state == state)
            .map(|t| t.at.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_job_is_queued_with_history() {
        let j = Job::new("T1", "img@1", None, JobTarget::Bay("a".into()));
        assert_eq!(j.state, JobState::Queued);
        assert_eq!(j.history.len(), 1);
        let id = j.id.as_str();
        assert!(id.starts_with("j-") && id.len() == 34, "{id}");
        assert!(id[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(j.next_step(), JobState::Claimed);
    }

    #[test]
    fn crash_while_writing_resumes_writing() {
        let mut j = Job::new("T1", "img@1", None, JobTarget::Bay("a".into()));
        j.set_state(JobState::Claimed, None);
        assert_eq!(j.next_step(), JobState::Writing);
        j.set_state(JobState::Writing, None);
        j.interrupt("disk removed");
        assert_eq!(j.state, JobState::Interrupted);
        assert_eq!(j.resume_from, Some(JobState::Writing));
        assert_eq!(j.next_step(), JobState::Writing);
    }

    #[test]
    fn interrupt_after_verified_migration_resumes_at_wipe_stage() {
        let mut j = Job::new("T1", "img@1", Some("d1".into()), JobTarget::Bay("a".into()));
        j.set_state(JobState::DataVerified, None);
        j.interrupt("agent stopping");
        assert_eq!(j.next_step(), JobState::DataVerified);
    }

    fn claimed(j: &mut Job) {
        j.device = Some(DeviceRecord {
            name: "loop1".into(),
            dev_path: "/dev/loop1".into(),
            identity: "backing:/t/a.img".into(),
            bus: blockdev::Bus::Virtual,
            model: "x".into(),
            serial: None,
            wwn: None,
            size_bytes: 1,
            bay: None,
            diskseq: None,
        });
    }

    #[test]
    fn retry_point_is_the_step_that_stopped_unless_before_the_image_was_verified() {
        let mut j = Job::new("T1", "img@1", Some("d".into()), JobTarget::Bay("a".into()));
        j.set_state(JobState::Cancelled, None);
        assert_eq!(j.retry_point(), None, "never claimed a disk");
        let mut j = Job::new("T1", "img@1", Some("d".into()), JobTarget::Bay("a".into()));
        claimed(&mut j);
        for s in [JobState::Claimed, JobState::Writing] {
            j.set_state(s, None);
        }
        j.set_state(JobState::Failed, Some("write error".into()));
        assert_eq!(j.retry_point(), None, "failed while writing: start over");
        for s in [JobState::ImageVerified, JobState::Migrating] {
            j.set_state(s, None);
        }
        j.set_state(JobState::Failed, Some("restore mismatch".into()));
        assert_eq!(j.retry_point(), Some(JobState::Migrating));
        j.set_state(JobState::Wiping, None);
        j.set_state(JobState::Cancelled, None);
        assert_eq!(j.retry_point(), Some(JobState::Wiping));
        j.set_state(JobState::Writing, None);
        j.interrupt("disk removed");
        assert_eq!(j.retry_point(), None);
        j.set_state(JobState::ImageVerified, None);
        j.interrupt("disk removed");
        assert_eq!(j.retry_point(), Some(JobState::ImageVerified));
    }

    #[test]
    fn terminal_jobs_are_not_interrupted() {
        let mut j = Job::new("T1", "img@1", None, JobTarget::Serial("S".into()));
        j.set_state(JobState::Done, None);
        j.interrupt("x");
        assert_eq!(j.state, JobState::Done);
    }

    #[test]
    fn state_names_round_trip_through_json() {
        for s in [
            JobState::ImageVerified,
            JobState::DataVerified,
            JobState::Interrupted,
        ] {
            let t = serde_json::to_string(&s).unwrap();
            assert_eq!(t, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<JobState>(&t).unwrap(), s);
        }
    }

    /// A record as the journal has always written it, the disk's bus a plain string: read
    /// into the typed [`blockdev::Bus`] and written back byte for byte.
    #[test]
    fn an_old_journal_line_with_a_bus_string_reads_and_writes_back_unchanged() {
        for (bus, typed) in [
            ("usb", blockdev::Bus::Usb),
            ("virtual", blockdev::Bus::Virtual),
            ("virtio", blockdev::Bus::Other("virtio".into())),
        ] {
            let line = format!(
                concat!(
                    r#"{{"format":1,"id":"j-0a1b2c3d","ticket":"T1","image":"img@1","#,
                    r#""dataset":null,"target":{{"bay":"a"}},"state":"image_verified","#,
                    r#""resume_from":null,"device":{{"name":"sdb","dev_path":"/dev/sdb","#,
                    r#""identity":"serial:S1","bus":"{}","model":"ATA X","serial":"S1","#,
                    r#""size_bytes":1024,"bay":"a","diskseq":7}},"error":null,"#,
                    r#""history":[{{"state":"queued","at":"2025-01-01T00:00:00Z"}}],"#,
                    r#""results":{{}},"provisioning":false}}"#
                ),
                bus
            );
            let job: Job = serde_json::from_str(&line).unwrap();
            assert_eq!(job.device.as_ref().unwrap().bus, typed);
            assert_eq!(serde_json::to_string(&job).unwrap(), line);
        }
    }
}
