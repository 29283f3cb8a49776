//! Unit tests of the store writer on a real SQLite file: merging deltas, the tier cascade,
//! retention, the registry and the outbox bound.

use iotmon_wire::{DeviceState, MetricValue, Metrics};

use super::*;
use crate::rollup::{Accumulator, RollupDelta};
use crate::shard::RegistryEntry;
use crate::store::{db_path, history, schema};

const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z, a whole hour.

fn entry(device: &str) -> RegistryEntry {
    let mut metrics = Metrics::new();
    metrics.insert("t".into(), MetricValue::Number(1.0));
    RegistryEntry {
        state: DeviceState {
            id: device.into(),
            group: "hq/a".into(),
            ts: T0,
            metrics,
            online: true,
        },
        first_seen: T0,
        last_seen: T0,
    }
}

fn delta(device: &str, start: i64, value: f64, ts: i64) -> RollupDelta {
    RollupDelta {
        device: device.into(),
        metric: "t".into(),
        start,
        values: Accumulator::new(value, ts),
    }
}

fn writer(dir: &std::path::Path, config: &BridgeConfig) -> Writer {
    counted_writer(dir, config).0
}

/// A writer on the store in `dir`, and the counters it reports into.
fn counted_writer(dir: &std::path::Path, config: &BridgeConfig) -> (Writer, Arc<BridgeCounters>) {
    let counters = Arc::new(BridgeCounters::default());
    let connection = schema::open(&db_path(dir)).expect("open");
    let writer = Writer::new(connection, config, counters.clone(), T0).expect("writer");
    (writer, counters)
}

fn batch(devices: Vec<RegistryEntry>, rollups: Vec<RollupDelta>) -> StoreBatch {
    StoreBatch { rollups, devices }
}

fn query(
    dir: &std::path::Path,
    from: i64,
    to: i64,
    points: usize,
) -> iotmon_wire::history::HistorySeries {
    history::HistoryReader::new(dir, &BridgeConfig::default())
        .query(&iotmon_wire::history::HistoryQuery {
            device: "d1".into(),
            metric: "t".into(),
            from,
            to,
            max_points: points,
            now: to,
        })
        .expect("query")
}

/// Rows of `tier`, each key once whether it is in `rollups`, `recent_rollups` or both.
fn count_rows(writer: &Writer, tier: i64) -> i64 {
    writer
        .connection
        .query_row(
            "SELECT COUNT(*) FROM (
                SELECT device, metric, start FROM rollups WHERE tier = ?1
                UNION SELECT device, metric, start FROM recent_rollups WHERE tier = ?1)",
            [tier],
            |row| row.get(0),
        )
        .expect("count")
}

/// Every row of `tier`, from both tables, in (start, device, metric) order.
fn rows(writer: &Writer, tier: i64) -> Vec<recent::StoredRow> {
    recent::rows_in_range(&writer.connection, tier, i64::MIN, i64::MAX).expect("rows")
}

#[test]
fn deltas_merge_and_coarser_tiers_cascade_once_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let first = batch(
        vec![entry("d1")],
        vec![
            delta("d1", T0, 5.0, T0 + 1),
            delta("d1", T0 + 10_000, 1.0, T0 + 10_001),
        ],
    );
    writer.write(&[first]).expect("write");
    // A second flush of the same window merges into its row.
    let second = batch(
        vec![],
        vec![delta("d1", T0, 9.0, T0 + 2), delta("d1", T0, -3.0, T0)],
    );
    writer.write(&[second]).expect("write");
    let series = query(dir.path(), T0, T0 + 20_000, 100);
    assert_eq!(series.tier_ms, 10_000);
    assert_eq!(series.points.len(), 2);
    let point = series.points[0];
    assert_eq!(
        (point.count, point.min, point.max, point.last),
        (3, -3.0, 9.0, 9.0)
    );
    assert_eq!(point.mean, 11.0 / 3.0);

    // Not yet closed: no 1-minute row.
    writer.maintain(T0 + 60_000).expect("maintain");
    assert_eq!(count_rows(&writer, 60_000), 0);
    // Closed (end + grace + two flushes): one 1-minute row holding both 10 s windows.
    writer.maintain(T0 + 60_000 + 7_000).expect("maintain");
    let minute = rows(&writer, 60_000);
    assert_eq!(minute.len(), 1);
    let v = minute[0].values;
    assert_eq!((v.count, v.min, v.max, v.last), (4, -3.0, 9.0, 1.0));
}

#[test]
fn retention_deletes_old_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let rows = batch(vec![entry("d1")], vec![delta("d1", T0, 5.0, T0)]);
    writer.write(&[rows]).expect("write");
    writer.maintain(T0 + 3 * 86_400_000).expect("maintain");
    assert_eq!(count_rows(&writer, 10_000), 0);
}

#[test]
fn the_registry_reloads_with_first_and_last_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let mut later = entry("d1");
    later.first_seen = T0 + 5;
    later.last_seen = T0 + 9;
    writer
        .write(&[batch(vec![entry("d1"), entry("d2")], vec![])])
        .expect("write");
    writer.write(&[batch(vec![later], vec![])]).expect("write");
    let mut loaded = registry::load(&writer.connection).expect("load");
    loaded.sort_by(|a, b| a.state.id.cmp(&b.state.id));
    assert_eq!(loaded.len(), 2);
    assert_eq!((loaded[0].first_seen, loaded[0].last_seen), (T0, T0 + 9));
    assert_eq!(&*loaded[0].state.group, "hq/a");
}

#[test]
fn spikes_survive_downsampling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let rollups = (0..360)
        .map(|i| {
            let value = if i == 100 { 1000.0 } else { 1.0 };
            delta("d1", T0 + i * 10_000, value, T0 + i * 10_000)
        })
        .collect();
    writer
        .write(&[batch(vec![entry("d1")], rollups)])
        .expect("write");
    // An hour at 10 points: 6-minute buckets of the 10 s tier.
    let series = query(dir.path(), T0, T0 + 3_600_000, 10);
    assert_eq!(series.points.len(), 10);
    assert_eq!(series.bucket_ms, 360_000);
    assert_eq!(series.points.iter().map(|p| p.count).sum::<u64>(), 360);
    assert_eq!(series.points[2].max, 1000.0, "the spike at 1000 s survives");
    assert_eq!(series.points[2].min, 1.0);
}

#[test]
fn coarse_queries_read_fresh_windows_from_finer_tiers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let rollups = (0..6 * 20)
        .map(|i| delta("d1", T0 + i * 10_000, i as f64, T0 + i * 10_000))
        .collect();
    writer
        .write(&[batch(vec![entry("d1")], rollups)])
        .expect("write");
    // Ten minutes cascaded to 1-minute rows; the last ten are still 10 s rows only.
    writer.maintain(T0 + 600_000 + 7_000).expect("maintain");
    let series = query(dir.path(), T0, T0 + 1_200_000, 20);
    assert_eq!(series.points.len(), 20);
    assert_eq!(series.points.iter().map(|p| p.count).sum::<u64>(), 120);
    assert_eq!(series.points[19].max, 119.0);
}

#[test]
fn a_full_outbox_drops_the_oldest_entries_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BridgeConfig::default();
    config.influx.enabled = true;
    config.influx.max_outbox_bytes = 300;
    let (mut writer, counters) = counted_writer(dir.path(), &config);
    for window in 0..6 {
        let start = T0 + window * 10_000;
        let rows = batch(vec![entry("d1")], vec![delta("d1", start, 1.0, start)]);
        writer.write(&[rows]).expect("write");
        writer.maintain(start + 10_000 + 7_000).expect("maintain");
    }
    let (entries, bytes): (i64, i64) = writer
        .connection
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM influx_outbox",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("outbox");
    assert!(bytes <= 300, "{bytes}");
    assert!(entries >= 1);
    let dropped = counters.influx_points_dropped.load(Ordering::Relaxed);
    // Six 10 s windows and the 1 min window they closed, each exported once.
    assert_eq!(
        dropped as i64 + entries,
        7,
        "every window exported once, the oldest dropped"
    );
    let first: String = writer
        .connection
        .query_row(
            "SELECT lines FROM influx_outbox ORDER BY seq LIMIT 1",
            [],
            |row| row.get(0),
        )
        .expect("line");
    assert!(
        first.starts_with("rollup_10s,device=d1,group=hq/a,level1=hq,level2=a t_count=1i"),
        "{first}"
    );
}

#[test]
fn a_full_disk_is_counted_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut writer, counters) = counted_writer(dir.path(), &BridgeConfig::default());
    writer
        .write(&[batch(vec![entry("d1")], vec![])])
        .expect("write");
    fill_the_disk(&writer);
    let many = (0..5_000)
        .map(|i| delta("d1", T0 + i * 10_000, 1.0, T0 + i * 10_000))
        .collect();
    let failed = writer.write(&[batch(vec![], many)]);
    assert!(failed.is_err(), "the write cannot fit");
    writer.record_failure(Failed::Write { batches: 1 }, failed);
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 1);
    assert_eq!(counters.store_maintenance_errors.load(Ordering::Relaxed), 0);
    assert_eq!(
        count_rows(&writer, 10_000),
        0,
        "the transaction rolled back"
    );
    // Space again: the writer carries on.
    writer
        .connection
        .pragma_update(None, "max_page_count", 1_000_000)
        .expect("limit");
    let rows = batch(vec![], vec![delta("d1", T0, 1.0, T0)]);
    writer
        .write(&[rows])
        .expect("write after the disk has room");
    assert_eq!(count_rows(&writer, 10_000), 1);
}

/// The InfluxDB sender deletes each entry it has sent from the outbox through a connection
/// of its own, back to back while it catches up after an outage. A transaction of the
/// writer that read before that delete committed must wait for the lock, not fail: begun
/// deferred, its first write after a read failed at once with SQLITE_BUSY ("database is
/// locked", no busy wait), and the batch or maintenance pass was lost.
#[test]
fn writes_wait_for_the_outbox_sender_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BridgeConfig::default();
    config.influx.enabled = true;
    let (mut writer, counters) = counted_writer(dir.path(), &config);
    let sender_connection = schema::open(&db_path(dir.path())).expect("open");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender_done = Arc::clone(&done);
    let sender = std::thread::spawn(move || {
        let mut deletes = 0u64;
        while !sender_done.load(Ordering::Relaxed) {
            sender_connection
                .execute(
                    "INSERT INTO influx_outbox (lines, points, bytes) VALUES ('x', 1, 1)",
                    [],
                )
                .expect("insert");
            sender_connection
                .execute(
                    "DELETE FROM influx_outbox WHERE seq = (SELECT MIN(seq) FROM influx_outbox)",
                    [],
                )
                .expect("delete");
            deletes += 1;
        }
        deletes
    });
    let devices: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
    for window in 0..200 {
        let start = T0 + window * 10_000;
        let registered = if window == 0 {
            devices.iter().map(|device| entry(device)).collect()
        } else {
            vec![]
        };
        let rows = batch(
            registered,
            devices
                .iter()
                .map(|device| delta(device, start, 1.0, start))
                .collect(),
        );
        writer.write(&[rows]).expect("write beside the sender");
        writer
            .maintain(start + 10_000 + 7_000)
            .expect("maintenance beside the sender");
    }
    done.store(true, Ordering::Relaxed);
    let deletes = sender.join().expect("sender");
    assert!(deletes > 0, "the sender ran alongside");
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 0);
}

/// Sum of the counts of every point of d1's `t` over the first hour.
/// Stands in for a full disk: SQLite's page limit set to the pages in use, so the next
/// growth of the file fails with SQLITE_FULL.
fn fill_the_disk(writer: &Writer) {
    let pages: i64 = writer
        .connection
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .expect("page count");
    writer
        .connection
        .pragma_update(None, "max_page_count", pages)
        .expect("limit");
}

fn stored_count(dir: &std::path::Path) -> u64 {
    query(dir, T0, T0 + 3_600_000, 1000)
        .points
        .iter()
        .map(|point| point.count)
        .sum()
}

fn recent_row_count(writer: &Writer) -> u64 {
    recent::count(&writer.connection).expect("count")
}

#[test]
fn history_merges_a_window_split_between_the_two_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let first = batch(
        vec![entry("d1")],
        vec![
            delta("d1", T0, 5.0, T0 + 2),
            delta("d1", T0 + 10_000, 7.0, T0 + 10_000),
        ],
    );
    writer.write(&[first]).expect("write");
    writer.merge_recent(T0).expect("merge");
    assert_eq!(
        recent_row_count(&writer),
        0,
        "the merge empties the recent table"
    );
    // The open window gets more deltas after the merge: its row is now in both tables.
    let later = batch(
        vec![],
        vec![
            delta("d1", T0, 1.0, T0 + 1),
            delta("d1", T0 + 20_000, 3.0, T0 + 20_000),
        ],
    );
    writer.write(&[later]).expect("write");
    let series = query(dir.path(), T0, T0 + 30_000, 100);
    let points: Vec<(i64, u64, f64, f64, f64)> = series
        .points
        .iter()
        .map(|p| (p.ts, p.count, p.min, p.max, p.last))
        .collect();
    assert_eq!(
        points,
        vec![
            (T0, 2, 1.0, 5.0, 5.0),
            (T0 + 10_000, 1, 7.0, 7.0, 7.0),
            (T0 + 20_000, 1, 3.0, 3.0, 3.0),
        ],
        "merged (the newest timestamp's value is last), rollups only, recent only"
    );
    // Moving the rest gives the same answer from one table.
    writer.merge_recent(T0 + 30_000).expect("merge");
    assert_eq!(query(dir.path(), T0, T0 + 30_000, 100), series);
    assert_eq!(count_rows(&writer, 10_000), 3);
}

#[test]
fn cascade_and_export_read_windows_split_between_the_two_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BridgeConfig::default();
    config.influx.enabled = true;
    let mut writer = writer(dir.path(), &config);
    let first = batch(vec![entry("d1")], vec![delta("d1", T0, 4.0, T0 + 1)]);
    writer.write(&[first]).expect("write");
    writer.merge_recent(T0 + 1_000).expect("merge");
    let second = (1..6)
        .map(|i| delta("d1", T0 + i * 10_000, i as f64, T0 + i * 10_000))
        .chain([delta("d1", T0, 2.0, T0)])
        .collect();
    writer.write(&[batch(vec![], second)]).expect("write");
    writer.maintain(T0 + 60_000 + 7_000).expect("maintain");
    let minute = rows(&writer, 60_000);
    assert_eq!(minute.len(), 1);
    let v = minute[0].values;
    assert_eq!((v.count, v.min, v.max, v.last), (7, 1.0, 5.0, 5.0));
    let first_line: String = writer
        .connection
        .query_row(
            "SELECT lines FROM influx_outbox ORDER BY seq LIMIT 1",
            [],
            |row| row.get(0),
        )
        .expect("outbox");
    assert!(
        first_line.starts_with(&format!(
            "rollup_10s,device=d1,group=hq/a,level1=hq,level2=a t_count=2i,t_mean=3.0,t_min=2.0,t_max=4.0,t_last=4.0 {T0}"
        )),
        "{first_line}"
    );
}

/// Runs the slices of the merge under way until it is complete; returns how many it took.
fn finish_merge(writer: &mut Writer) -> usize {
    let mut slices = 0;
    while writer.merge.is_some() {
        writer.merge_slice().expect("merge slice");
        slices += 1;
    }
    slices
}

#[test]
fn merges_come_every_interval_or_at_the_row_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let rows = batch(vec![entry("d1")], vec![delta("d1", T0, 1.0, T0)]);
    writer.write(&[rows]).expect("write");
    writer.maintain(T0 + MERGE_EVERY_MS - 1).expect("maintain");
    // The delta and the minute it cascaded into.
    assert_eq!(recent_row_count(&writer), 2, "not yet due");
    writer.maintain(T0 + MERGE_EVERY_MS).expect("maintain");
    assert!(writer.merge.is_some(), "a merge starts when due");
    assert_eq!(recent_row_count(&writer), 2, "and moves nothing yet");
    assert_eq!(finish_merge(&mut writer), 1);
    assert_eq!(recent_row_count(&writer), 0, "merged when due");
    assert_eq!(stored_count(dir.path()), 1);

    writer.rows_since_merge = MERGE_AT_ROWS - 1;
    let rows = batch(vec![], vec![delta("d1", T0 + 10_000, 1.0, T0 + 10_000)]);
    writer.write(&[rows]).expect("write");
    writer.maintain(T0 + MERGE_EVERY_MS + 1).expect("maintain");
    finish_merge(&mut writer);
    assert_eq!(recent_row_count(&writer), 0, "merged at the row bound");
    assert_eq!(stored_count(dir.path()), 2);
}

#[test]
fn a_restart_before_the_merge_keeps_every_row_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = writer(dir.path(), &BridgeConfig::default());
    let rows = (0..30)
        .map(|i| delta("d1", T0 + i * 10_000, 1.0, T0 + i * 10_000))
        .collect();
    first
        .write(&[batch(vec![entry("d1")], rows)])
        .expect("write");
    first.merge_recent(T0).expect("merge");
    let rows = (30..60)
        .map(|i| delta("d1", T0 + i * 10_000, 1.0, T0 + i * 10_000))
        .collect();
    first.write(&[batch(vec![], rows)]).expect("write");
    // Gone without merging, as after `kill -9`: the unmerged rows are committed and read.
    drop(first);
    assert_eq!(stored_count(dir.path()), 60);

    let mut second = writer(dir.path(), &BridgeConfig::default());
    assert_eq!(
        second.rows_since_merge, 30,
        "the next merge knows what is waiting"
    );
    let more = batch(vec![], vec![delta("d1", T0 + 590_000, 2.0, T0 + 590_001)]);
    second.write(&[more]).expect("write");
    assert_eq!(stored_count(dir.path()), 61);
    second.merge_recent(T0 + 600_000).expect("merge");
    assert_eq!(stored_count(dir.path()), 61, "each row moved once");
    assert_eq!(count_rows(&second, 10_000), 60);
}

#[test]
fn a_failed_merge_leaves_both_tables_as_they_were() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut writer, counters) = counted_writer(dir.path(), &BridgeConfig::default());
    let many: Vec<RollupDelta> = (0..5_000)
        .map(|i| delta("d1", T0 + i * 10_000, 1.0, T0 + i * 10_000))
        .collect();
    writer
        .write(&[batch(vec![entry("d1")], many)])
        .expect("write");
    // No room to grow: the merge cannot insert into `rollups` (as with a full disk).
    fill_the_disk(&writer);
    let failed = writer.merge_recent(T0 + 1);
    assert!(failed.is_err(), "the merge cannot fit");
    writer.record_failure(Failed::Maintenance, failed);
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 1);
    assert_eq!(counters.store_maintenance_errors.load(Ordering::Relaxed), 1);
    assert_eq!(
        recent_row_count(&writer),
        5_000,
        "nothing left the recent table"
    );
    let in_rollups: i64 = writer
        .connection
        .query_row("SELECT COUNT(*) FROM rollups", [], |row| row.get(0))
        .expect("count");
    assert_eq!(in_rollups, 0, "nothing reached rollups");
    writer
        .connection
        .pragma_update(None, "max_page_count", 1_000_000)
        .expect("limit");
    writer.merge_recent(T0 + 2).expect("merge with room again");
    assert_eq!(recent_row_count(&writer), 0);
    assert_eq!(count_rows(&writer, 10_000), 5_000);
}

/// A delta of `metric` for `device`, with a value and timestamp of its own (whole numbers, so
/// sums are exact in any order).
fn metric_delta(device: usize, metric: usize, start: i64, value: i64) -> RollupDelta {
    RollupDelta {
        device: format!("d{device:02}").into(),
        metric: format!("m{metric}").into(),
        start,
        values: Accumulator::new(value as f64, start + value),
    }
}

/// What every reader should see: each key's deltas merged in the order they were written.
type Expected = BTreeMap<(i64, String, String), Accumulator>;

fn write_expected(writer: &mut Writer, expected: &mut Expected, deltas: Vec<RollupDelta>) {
    for delta in &deltas {
        let key = (
            delta.start,
            delta.device.to_string(),
            delta.metric.to_string(),
        );
        expected
            .entry(key)
            .and_modify(|values| values.merge(&delta.values))
            .or_insert(delta.values);
    }
    let devices = deltas.iter().map(|d| entry(&d.device)).collect();
    writer.write(&[batch(devices, deltas)]).expect("write");
}

/// The 10 s rows as the cascade and export read them, and as a chart reads each series,
/// checked against `expected`.
fn assert_readers_see(writer: &Writer, dir: &std::path::Path, expected: &Expected, when: &str) {
    let names: BTreeMap<(i64, i64), (String, String)> = {
        let mut statement = writer
            .connection
            .prepare("SELECT d.id, d.name, m.id, m.name FROM devices d, metrics m")
            .expect("names");
        let rows = statement
            .query_map([], |row| {
                Ok(((row.get(0)?, row.get(2)?), (row.get(1)?, row.get(3)?)))
            })
            .expect("query");
        rows.map(|row| row.expect("row")).collect()
    };
    let seen: Expected = rows(writer, 10_000)
        .into_iter()
        .map(|row| {
            let (device, metric) = names[&(row.device, row.metric)].clone();
            ((row.start, device, metric), row.values)
        })
        .collect();
    assert_eq!(&seen, expected, "rows in range, {when}");
    let reader = history::HistoryReader::new(dir, &BridgeConfig::default());
    for device in ["d00", "d07", "d19"] {
        let series = reader
            .query(&iotmon_wire::history::HistoryQuery {
                device: device.into(),
                metric: "m1".into(),
                from: T0,
                to: T0 + 600_000,
                max_points: 1000,
                now: T0 + 600_000,
            })
            .expect("history");
        let points: Vec<(i64, u64, f64, f64, f64)> = series
            .points
            .iter()
            .map(|p| (p.ts, p.count, p.min, p.max, p.last))
            .collect();
        let wanted: Vec<(i64, u64, f64, f64, f64)> = expected
            .iter()
            .filter(|((_, d, m), _)| d == device && m == "m1")
            .map(|((start, _, _), v)| (*start, v.count, v.min, v.max, v.last))
            .collect();
        assert_eq!(points, wanted, "history of {device}, {when}");
    }
}

#[test]
fn a_merge_in_slices_shows_readers_the_same_rows_at_every_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    writer.merge_slice_rows = 50;
    let mut expected = Expected::new();
    // 20 devices × 3 metrics × 8 windows; the first 4 windows merged into `rollups`, then
    // more deltas for windows 2..8: windows 2 and 3 are split between the two tables.
    let deltas = |windows: std::ops::Range<i64>, value: i64| -> Vec<RollupDelta> {
        windows
            .flat_map(|w| {
                (0..20).flat_map(move |d| {
                    (0..3).map(move |m| metric_delta(d, m, T0 + w * 10_000, value + w))
                })
            })
            .collect()
    };
    write_expected(&mut writer, &mut expected, deltas(0..4, 100));
    writer.merge_recent(T0).expect("first merge");
    write_expected(&mut writer, &mut expected, deltas(2..8, 200));
    assert_readers_see(&writer, dir.path(), &expected, "before the merge");

    writer.maintain(T0 + MERGE_EVERY_MS).expect("maintain");
    let mut slices = 0;
    while writer.merge.is_some() {
        let before = recent_row_count(&writer);
        writer.merge_slice().expect("slice");
        let moved = before - recent_row_count(&writer);
        assert!(moved <= 50, "slice {slices} moved {moved} rows");
        slices += 1;
        assert_readers_see(
            &writer,
            dir.path(),
            &expected,
            &format!("after slice {slices}"),
        );
        // Batches between slices: a device already moved, one not yet, a new window.
        let more = vec![
            metric_delta(0, 1, T0 + 30_000, 1000 + slices),
            metric_delta(19, 1, T0 + 30_000, 2000 + slices),
            metric_delta(7, 1, T0 + 90_000, 3000 + slices),
        ];
        write_expected(&mut writer, &mut expected, more);
        assert_readers_see(&writer, dir.path(), &expected, "after a write");
    }
    // 18 rows per device (6 windows × 3 metrics) and more for the three written between
    // slices: two devices per slice at most, so at least 10 slices.
    assert!(slices >= 10, "{slices} slices");
    assert!(
        recent_row_count(&writer) > 0,
        "rows written during the merge wait for the next one"
    );
    writer.merge_recent(T0 + 2 * MERGE_EVERY_MS).expect("merge");
    assert_eq!(recent_row_count(&writer), 0);
    assert_readers_see(&writer, dir.path(), &expected, "after the last merge");
}

#[test]
fn a_merge_slice_moves_whole_devices_and_no_more_rows_than_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    // 30 devices with 30 rows each (3 metrics × 10 windows), and one with 150.
    let mut deltas: Vec<RollupDelta> = (0..10)
        .flat_map(|w| {
            (0..30).flat_map(move |d| (0..3).map(move |m| metric_delta(d, m, T0 + w * 10_000, 1)))
        })
        .collect();
    deltas
        .extend((0..50).flat_map(|w| (0..3).map(move |m| metric_delta(30, m, T0 + w * 10_000, 1))));
    let devices = (0..=30).map(|d| entry(&format!("d{d:02}"))).collect();
    writer.write(&[batch(devices, deltas)]).expect("write");
    let mut pass = recent::MergePass::begin(&writer.connection)
        .expect("begin")
        .expect("rows to merge");
    let mut moved_per_slice = Vec::new();
    while !pass.is_done() {
        let tx = writer.connection.transaction().expect("tx");
        let (next, moved) = recent::merge_slice(&tx, pass, 100).expect("slice");
        tx.commit().expect("commit");
        moved_per_slice.push(moved);
        pass = next;
    }
    assert_eq!(moved_per_slice.iter().sum::<usize>(), 30 * 30 + 150);
    assert_eq!(recent_row_count(&writer), 0);
    let (last, whole) = moved_per_slice.split_last().expect("slices");
    assert_eq!(
        *last, 150,
        "a device with more rows than the bound moves alone"
    );
    for moved in whole {
        assert!(*moved <= 100 && moved % 30 == 0, "{moved_per_slice:?}");
    }
    assert_eq!(count_rows(&writer, 10_000), 30 * 30 + 150);
}

#[test]
fn a_merge_under_way_is_not_started_again_and_a_failed_slice_abandons_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    writer.merge_slice_rows = 40;
    let deltas: Vec<RollupDelta> = (0..10)
        .flat_map(|w| {
            (0..10).flat_map(move |d| (0..3).map(move |m| metric_delta(d, m, T0 + w * 10_000, 1)))
        })
        .collect();
    let devices = (0..10).map(|d| entry(&format!("d{d:02}"))).collect();
    writer.write(&[batch(devices, deltas)]).expect("write");
    writer.maintain(T0 + MERGE_EVERY_MS).expect("maintain");
    writer.merge_slice().expect("slice");
    let under_way = writer.merge;
    writer
        .maintain(T0 + MERGE_EVERY_MS + 1_000)
        .expect("maintain");
    assert_eq!(writer.merge, under_way, "the merge goes on where it was");
    // Each device has 30 rows of 10 s and 6 of the two minutes the maintenance cascaded: one
    // device per slice.
    assert_eq!(recent_row_count(&writer), 9 * 36);
    // No room to grow: the next slice fails, is rolled back, and the merge is abandoned.
    fill_the_disk(&writer);
    let mut failed = Ok(());
    while failed.is_ok() && writer.merge.is_some() {
        failed = writer.merge_slice();
    }
    assert!(failed.is_err(), "a slice cannot fit");
    assert_eq!(writer.merge, None);
    assert_eq!(
        count_rows(&writer, 10_000),
        300,
        "every row once, in one table or the other"
    );
    writer
        .connection
        .pragma_update(None, "max_page_count", 1_000_000)
        .expect("limit");
    // Still due: the next maintenance starts a merge again, which moves the rest.
    writer
        .maintain(T0 + MERGE_EVERY_MS + 2_000)
        .expect("maintain");
    assert!(writer.merge.is_some());
    finish_merge(&mut writer);
    assert_eq!(recent_row_count(&writer), 0);
    assert_eq!(count_rows(&writer, 10_000), 300);
}

/// The tables as they were before `recent_rollups` existed.
const SCHEMA_BEFORE_RECENT_ROLLUPS: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    group_path TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    metrics_seen TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE rollups (tier INTEGER NOT NULL, device INTEGER NOT NULL,
    metric INTEGER NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, last REAL NOT NULL,
    last_ts INTEGER NOT NULL, PRIMARY KEY (tier, device, metric, start)) WITHOUT ROWID;
CREATE INDEX rollups_by_time ON rollups (tier, start);
CREATE TABLE alerts (device TEXT NOT NULL, rule TEXT NOT NULL, active INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0, raised_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (device, rule));
CREATE TABLE influx_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, lines TEXT NOT NULL,
    points INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO meta VALUES ('cascaded_until_60000', 1704067200000);
INSERT INTO metrics (id, name) VALUES (1, 't');
INSERT INTO rollups VALUES (10000, 1, 1, 1704067200000, 2, 10.0, 4.0, 6.0, 6.0, 1704067200005);
";

/// A database in `dir` as an older bridge left it: one device, one 10 s row of it. The
/// connection stays open for the caller to inspect the file.
fn database_of_an_older_bridge(dir: &std::path::Path) -> rusqlite::Connection {
    let old = rusqlite::Connection::open(db_path(dir)).expect("create");
    old.execute_batch(SCHEMA_BEFORE_RECENT_ROLLUPS)
        .expect("old schema");
    let tx = old.unchecked_transaction().expect("tx");
    registry::upsert(&tx, &entry("d1")).expect("device");
    tx.commit().expect("commit");
    old
}

#[test]
fn a_database_from_before_the_recent_table_opens_with_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(database_of_an_older_bridge(dir.path()));

    let mut writer = writer(dir.path(), &BridgeConfig::default());
    assert_eq!(stored_count(dir.path()), 2, "the old rows are read");
    assert_eq!(registry::load(&writer.connection).expect("load").len(), 1);
    let more = batch(vec![], vec![delta("d1", T0, 1.0, T0 + 1)]);
    writer.write(&[more]).expect("write");
    assert_eq!(stored_count(dir.path()), 3, "new deltas merge with them");
    writer.merge_recent(T0 + 10_000).expect("merge");
    let merged = rows(&writer, 10_000);
    assert_eq!(merged.len(), 1);
    let v = merged[0].values;
    assert_eq!(
        (v.count, v.sum, v.min, v.max, v.last),
        (3, 11.0, 1.0, 6.0, 6.0)
    );
    // The watermark written by the older version still holds: the minute cascades once.
    writer.maintain(T0 + 60_000 + 7_000).expect("maintain");
    assert_eq!(rows(&writer, 60_000)[0].values.count, 3);
}

#[test]
fn a_reader_reads_a_database_of_an_older_bridge_without_changing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = database_of_an_older_bridge(dir.path());
    // No writer of this version opens it: only a reader, as a dashboard beside an old bridge.
    let series = query(dir.path(), T0, T0 + 3_600_000, 1000);
    let points: Vec<(i64, u64, f64, f64)> = series
        .points
        .iter()
        .map(|p| (p.ts, p.count, p.min, p.max))
        .collect();
    assert_eq!(points, vec![(T0, 2, 4.0, 6.0)]);
    let reader = history::HistoryReader::new(dir.path(), &BridgeConfig::default());
    assert_eq!(reader.devices().expect("devices").len(), 1);
    assert!(
        !recent::table_exists(&old).expect("schema"),
        "the reader leaves the old database as it was"
    );
}

#[test]
fn the_store_thread_merges_the_recent_rows_when_it_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = writer(dir.path(), &BridgeConfig::default());
    let (to_store, from_shards) = std::sync::mpsc::sync_channel(4);
    let thread = std::thread::spawn(move || writer.run(&from_shards));
    let rows = batch(vec![entry("d1")], vec![delta("d1", T0, 1.0, T0)]);
    to_store.send((Instant::now(), rows)).expect("send");
    drop(to_store);
    thread.join().expect("store thread");
    let connection = schema::open(&db_path(dir.path())).expect("open");
    assert_eq!(recent::count(&connection).expect("count"), 0);
    assert_eq!(stored_count(dir.path()), 1);
}

/// Bytes this process has handed to `write`-like system calls (WAL frames, checkpoints into
/// the database file), from `/proc/self/io`; 0 where that file does not exist.
fn bytes_written_by_process() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("wchar: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn probe_setting(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Time of the store thread over one report interval of the probe.
#[derive(Default)]
struct ProbeInterval {
    write: Duration,
    maintain: Duration,
    merge: Duration,
    /// The longest single write, maintenance pass and merge slice: how long a batch could
    /// wait behind the store thread.
    longest: [Duration; 3],
    /// Merges completed, and the store time the longest of them took over all its slices.
    merges: u32,
    longest_merge: Duration,
    longest_merge_slices: u32,
}

impl ProbeInterval {
    /// Records how long a step of `kind` (0 write, 1 maintenance, 2 slice) took.
    fn step(&mut self, kind: usize, took: Duration) -> Duration {
        self.longest[kind] = self.longest[kind].max(took);
        took
    }
}

/// Timing probe (not a test of behaviour): the reference load's store traffic, every device
/// reporting 3 metrics every 5 s (a fifth of the fleet each second, as 10 s deltas), with the
/// store thread's maintenance once per simulated second and the slices of a merge under way
/// between them, fed as fast as the store takes it.
/// Settings: `IOTMON_PROBE_SECONDS` simulated seconds (default 120), `IOTMON_PROBE_DEVICES`
/// (default 10,000), `IOTMON_PROBE_REPORT_EVERY` simulated seconds between report lines
/// (default 60), `IOTMON_PROBE_SLICES_PER_SECOND` merge slices at most per simulated second
/// (default 10; the store thread runs them whenever no batch waits, which at the reference
/// load is most of the time). Prints, per report interval, the store thread's time per
/// simulated second (writes, maintenance, merge slices), its longest single step (what a batch
/// could wait behind), the merges completed and the longest one's total time and slices, the
/// bytes written per simulated second, and the sizes of the database and WAL files.
#[test]
#[ignore = "timing probe; run with --ignored --nocapture in release"]
fn store_write_cost_probe() {
    let seconds = probe_setting("IOTMON_PROBE_SECONDS", 120);
    let fleet = probe_setting("IOTMON_PROBE_DEVICES", 10_000);
    let report_every = probe_setting("IOTMON_PROBE_REPORT_EVERY", 60).max(1);
    let slices_per_second = probe_setting("IOTMON_PROBE_SLICES_PER_SECOND", 10).max(1);
    let dir = tempfile::tempdir().expect("dir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    if let Ok(kib) = std::env::var("IOTMON_PROBE_CACHE_KIB") {
        writer
            .connection
            .pragma_update(None, "cache_size", format!("-{kib}"))
            .expect("cache");
    }
    let ids: Vec<iotmon_wire::DeviceId> =
        (0..fleet).map(|i| format!("dev-{i:05}").into()).collect();
    let devices: Vec<RegistryEntry> = ids.iter().map(|id| entry(id)).collect();
    writer
        .write(&[batch(devices, Vec::new())])
        .expect("registry");
    let metrics: [Arc<str>; 3] = ["temperature".into(), "humidity".into(), "pressure".into()];
    let mut total = Duration::ZERO;
    let mut interval = ProbeInterval::default();
    let (mut merge_took, mut merge_slices) = (Duration::ZERO, 0);
    let mut interval_bytes = bytes_written_by_process();
    let file_mib = |path: std::path::PathBuf| {
        std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
    };
    eprintln!(
        "simulated s | write ms/s | maintain ms/s | merge ms/s | total ms/s \
         | longest write / maintain / slice ms | merges | longest merge ms (slices) \
         | MiB written/s | db MiB | WAL MiB"
    );
    for second in 0..seconds {
        let now = T0 + second * 1000;
        let start = window_start(now, 10_000);
        // Every device reports once per 5 s: a fifth of them each second.
        let rollups: Vec<RollupDelta> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as i64) % 5 == second % 5)
            .flat_map(|(_, id)| {
                metrics.iter().map(move |m| RollupDelta {
                    device: id.clone(),
                    metric: m.clone(),
                    start,
                    values: Accumulator::new(20.0 + second as f64, now),
                })
            })
            .collect();
        // Two shards' batches, as the store thread receives them.
        let half = rollups.len() / 2;
        let (a, b) = rollups.split_at(half);
        let batches = [batch(Vec::new(), a.to_vec()), batch(Vec::new(), b.to_vec())];
        let began = Instant::now();
        writer.write(&batches).expect("write");
        let took = interval.step(0, began.elapsed());
        interval.write += took;
        let began = Instant::now();
        writer.maintain(now).expect("maintain");
        let took = interval.step(1, began.elapsed());
        interval.maintain += took;
        for _ in 0..slices_per_second {
            if writer.merge.is_none() {
                break;
            }
            let began = Instant::now();
            writer.merge_slice().expect("merge slice");
            let took = interval.step(2, began.elapsed());
            interval.merge += took;
            merge_took += took;
            merge_slices += 1;
            if writer.merge.is_none() {
                interval.merges += 1;
                if merge_took > interval.longest_merge {
                    interval.longest_merge = merge_took;
                    interval.longest_merge_slices = merge_slices;
                }
                (merge_took, merge_slices) = (Duration::ZERO, 0);
            }
        }
        if (second + 1) % report_every == 0 {
            let per_second = |d: Duration| d.as_secs_f64() * 1000.0 / report_every as f64;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let bytes = bytes_written_by_process();
            let db = db_path(dir.path());
            let wal = db.with_extension("db-wal");
            let busy = interval.write + interval.maintain + interval.merge;
            eprintln!(
                "{:>11} | {:>10.1} | {:>13.1} | {:>10.1} | {:>10.1} | {:>11.0} / {:>8.0} / {:>5.0} | {:>6} | {:>17.0} ({:>4}) | {:>13.2} | {:>6.0} | {:>7.0}",
                second + 1,
                per_second(interval.write),
                per_second(interval.maintain),
                per_second(interval.merge),
                per_second(busy),
                ms(interval.longest[0]),
                ms(interval.longest[1]),
                ms(interval.longest[2]),
                interval.merges,
                ms(interval.longest_merge),
                interval.longest_merge_slices,
                (bytes - interval_bytes) as f64 / report_every as f64 / 1_048_576.0,
                file_mib(db),
                file_mib(wal),
            );
            total += busy;
            interval = ProbeInterval::default();
            interval_bytes = bytes;
        }
    }
    eprintln!(
        "store: {:.2} ms per simulated second over {seconds} s of {fleet} devices",
        total.as_secs_f64() * 1000.0 / seconds as f64,
    );
    // A chart's query of the last hour (or what there is) as the store stands: from the
    // series-ordered rows and the recent ones.
    let end = T0 + seconds * 1000;
    let reader = history::HistoryReader::new(dir.path(), &BridgeConfig::default());
    let mut timings: Vec<Duration> = (0..50)
        .map(|i| {
            let began = Instant::now();
            let series = reader
                .query(&iotmon_wire::history::HistoryQuery {
                    device: format!("dev-{:05}", i * 7 % fleet),
                    metric: "temperature".into(),
                    from: end - 3_600_000,
                    to: end,
                    max_points: 300,
                    now: end,
                })
                .expect("history");
            assert!(!series.points.is_empty());
            began.elapsed()
        })
        .collect();
    timings.sort();
    eprintln!(
        "history, one hour at 300 points: median {:.2} ms, slowest {:.2} ms",
        timings[timings.len() / 2].as_secs_f64() * 1000.0,
        timings[timings.len() - 1].as_secs_f64() * 1000.0,
    );
}

/// The log lines `tracing` writes while `run` runs, one string each.
fn logged(run: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let text = String::from_utf8(lines.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    text.lines().map(str::to_string).collect()
}

#[test]
fn the_log_tells_a_lost_batch_from_maintenance_retried_each_at_most_once_per_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut writer, counters) = counted_writer(dir.path(), &BridgeConfig::default());
    let deltas = |from: i64| -> Vec<RollupDelta> {
        (0..5_000)
            .map(|i| delta("d1", from + i * 10_000, 1.0, from + i * 10_000))
            .collect()
    };
    writer
        .write(&[batch(vec![entry("d1")], deltas(T0))])
        .expect("write");
    fill_the_disk(&writer);
    let lines = logged(|| {
        for _ in 0..2 {
            let lost = writer.write(&[batch(vec![], deltas(T0 + 100_000_000))]);
            assert!(lost.is_err(), "the write cannot fit");
            writer.record_failure(Failed::Write { batches: 1 }, lost);
            let retried = writer.merge_recent(T0 + 1);
            assert!(retried.is_err(), "the merge cannot fit");
            writer.record_failure(Failed::Maintenance, retried);
        }
    });
    assert_eq!(lines.len(), 2, "one line of each kind: {lines:#?}");
    assert!(
        lines[0].contains("store write failed; batch lost") && lines[0].contains("batches=1"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("store maintenance failed; nothing lost")
            && !lines[1].contains("batch lost"),
        "{}",
        lines[1]
    );
    assert!(lines.iter().all(|line| line.contains("full")), "{lines:#?}");
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 4);
    assert_eq!(counters.store_maintenance_errors.load(Ordering::Relaxed), 2);
}
