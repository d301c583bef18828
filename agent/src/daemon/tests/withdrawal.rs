//! A withdrawal cancels waiting jobs of its client and stops running ones before migration.

use super::*;

#[test]
fn withdrawal_cancels_waiting_jobs_and_stops_running_ones_before_migration() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(2000);
    let a = agent(d.path(), f.clone());
    let run = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    let wait = a
        .add_job("T2", "img@1", Some("ds".into()), Some("b".into()), None)
        .unwrap();
    let other = a
        .add_job("T3", "img@1", None, Some("b".into()), None)
        .unwrap();
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    std::thread::sleep(Duration::from_millis(50));
    f.withdrawn.store(true, Ordering::SeqCst);
    let mut hit = a.custody_changed();
    hit.sort();
    let mut want = vec![run.id.clone(), wait.id.clone()];
    want.sort();
    assert_eq!(hit, want);
    assert_eq!(a.job(&wait.id).unwrap().state, JobState::Cancelled);
    assert!(a.wait_idle(Duration::from_secs(5)));
    let r = a.job(&run.id).unwrap();
    assert_eq!(r.state, JobState::Cancelled);
    assert!(!r.history.iter().any(|t| t.state == JobState::Migrating));
    assert!(
        r.history
            .last()
            .unwrap()
            .note
            .as_deref()
            .unwrap()
            .contains("withdrew")
    );
    assert_eq!(f.wipes.load(Ordering::SeqCst), 0);
    // The next disk in bay b gets the job without client data.
    a.disk_present(loop_disk("loop2", "/t/b-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(50));
    assert!(a.wait_idle(Duration::from_secs(5)));
    assert_eq!(a.job(&other.id).unwrap().state, JobState::Done);
}

#[test]
fn queued_job_of_a_withdrawn_client_is_cancelled_when_a_disk_comes_untold() {
    let d = tempfile::tempdir().unwrap();
    let f = fake(0);
    let a = agent(d.path(), f.clone());
    let j = a
        .add_job("T", "img@1", Some("ds".into()), Some("a".into()), None)
        .unwrap();
    f.withdrawn.store(true, Ordering::SeqCst);
    a.disk_present(loop_disk("loop1", "/t/a-1.img"));
    assert!(a.wait_idle(Duration::from_secs(5)));
    let j = a.job(&j.id).unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert!(j.device.is_none());
    assert_eq!(f.checks.load(Ordering::SeqCst), 0);
    assert_eq!(f.writes.load(Ordering::SeqCst), 0);
    assert_eq!(
        status_of(&a, "loop1"),
        DiskStatus::Waiting {
            reason: "waiting for a job".into()
        }
    );
}
