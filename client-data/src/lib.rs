//! Client data custody: ingest into encrypted staging, restore onto a mounted filesystem with
//! verification, secure wipe, withdrawals and deletion deadlines, the hash-chained audit log and
//! breach reports. Also home of the loop-device helper used to reach partitions.

pub mod loopdev;
