//! Writes a realistic hash-chained audit log for benchmarks (`bench/data.sh` times
//! `tek audit breach-report` on it).
//!
//!     cargo run --release -p client-data --example audit_log -- AUDIT_DIR [COUNT]
//!
//! Appends COUNT events (default 100000) to `AUDIT_DIR/audit.log`, created if missing: datasets
//! of 1000 clients going through ingest, migrate, verify and wipe (four events each), with a
//! withdrawal every 500 datasets. All stamped with the current time, so any window around now
//! covers them. The audit key is `AUDIT_DIR/../keys/audit.key` (a depot's layout), created if
//! missing.

use client_data::{AuditEvent, AuditLog, DeviceIdentity};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: audit_log AUDIT_DIR [COUNT]")?;
    let count: u64 = match args.next() {
        Some(c) => c.parse()?,
        None => 100_000,
    };
    let dir = std::path::Path::new(&dir);
    let keys = dir.parent().unwrap_or(dir).join("keys");
    let log = AuditLog::open(dir, &keys)?;
    let events = (0..count).map(|i| {
        let d = i / 4;
        let dataset = format!("ds-20260101-{d:08x}");
        let client = format!("C-{:04}", d % 1000);
        let ticket = format!("T-{d}");
        match i % 4 {
            0 => AuditEvent::Ingest {
                dataset,
                client,
                ticket,
                entries: 2000 + d % 5000,
                bytes: 50_000_000 + d * 1000,
                ciphertext_bytes: 50_100_000 + d * 1000,
                source: "directory".into(),
            },
            1 => AuditEvent::Migrate {
                dataset,
                client,
                ticket,
                job: Some(format!("job-{d}")),
                device: DeviceIdentity::new(
                    Some(&format!("SER{d:06}")),
                    None,
                    Some("Bench SSD"),
                    Some(256_000_000_000),
                    Some(&format!("sd{}", (b'a' + (d % 8) as u8) as char)),
                ),
                entries: 2000 + d % 5000,
                bytes: 50_000_000 + d * 1000,
                skipped: 0,
                renamed: 0,
                replaced: 0,
                resumed: 0,
                unjournaled: 0,
            },
            2 => AuditEvent::Verify {
                dataset,
                entries: 2000 + d % 5000,
                bytes: 50_000_000 + d * 1000,
                mismatches: 0,
                result: "passed".into(),
            },
            _ if d % 500 == 499 => AuditEvent::Withdraw {
                client,
                case: format!("case-{d}"),
                reason: "withdrawal".into(),
                received: "2026-01-05".into(),
                due: "2026-01-12".into(),
                datasets: 1,
            },
            _ => AuditEvent::Wipe {
                dataset,
                client,
                ticket,
                forced: false,
                reason: None,
                operator: "tek-agent".into(),
                ciphertext_bytes: 50_100_000 + d * 1000,
                record: format!("san-{d}"),
            },
        }
    });
    log.append_many(events)?;
    println!("{count} events appended to {}", log.path().display());
    Ok(())
}
