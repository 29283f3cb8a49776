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
    let connection = schema::open(&db_path(dir)).expect("open");
    Writer::new(connection, config, Arc::default(), T0).expect("writer")
}

fn batch(devices: Vec<RegistryEntry>, rollups: Vec<RollupDelta>) -> StoreBatch {
    StoreBatch { rollups, devices }
}

fn query(dir: &std::path::Path, from: i64, to: i64, points: usize) -> history::HistorySeries {
    history::HistoryReader::new(dir, &BridgeConfig::default())
        .query(&history::HistoryQuery {
            device: "d1".into(),
            metric: "t".into(),
            from,
            to,
            max_points: points,
            now: to,
        })
        .expect("query")
}

fn count_rows(writer: &Writer, tier: i64) -> i64 {
    writer
        .connection
        .query_row(
            "SELECT COUNT(*) FROM rollups WHERE tier = ?1",
            [tier],
            |row| row.get(0),
        )
        .expect("count")
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
    assert_eq!(count_rows(&writer, 60_000), 1);
    let row: (i64, f64, f64, f64) = writer
        .connection
        .query_row(
            "SELECT count, min, max, last FROM rollups WHERE tier = 60000",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .expect("row");
    assert_eq!(row, (4, -3.0, 9.0, 1.0));
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
    let counters = Arc::new(BridgeCounters::default());
    let connection = schema::open(&db_path(dir.path())).expect("open");
    let mut writer = Writer::new(connection, &config, counters.clone(), T0).expect("writer");
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
    let counters = Arc::new(BridgeCounters::default());
    let connection = schema::open(&db_path(dir.path())).expect("open");
    let mut writer =
        Writer::new(connection, &BridgeConfig::default(), counters.clone(), T0).expect("writer");
    writer
        .write(&[batch(vec![entry("d1")], vec![])])
        .expect("write");
    // SQLite's page limit stands in for a full disk: the next growth fails with SQLITE_FULL.
    let pages: i64 = writer
        .connection
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .expect("page count");
    writer
        .connection
        .pragma_update(None, "max_page_count", pages)
        .expect("limit");
    let many = (0..5_000)
        .map(|i| delta("d1", T0 + i * 10_000, 1.0, T0 + i * 10_000))
        .collect();
    let failed = writer.write(&[batch(vec![], many)]);
    assert!(failed.is_err(), "the write cannot fit");
    writer.check(failed);
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 1);
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

/// Timing probe (not a test of behaviour): the reference load's store traffic, every device
/// reporting 3 metrics every 5 s (a fifth of the fleet each second, as 10 s deltas), with the
/// store thread's maintenance once per simulated second, fed as fast as the store takes it.
/// Settings: `IOTMON_PROBE_SECONDS` simulated seconds (default 120), `IOTMON_PROBE_DEVICES`
/// (default 10,000), `IOTMON_PROBE_REPORT_EVERY` simulated seconds between report lines
/// (default 60). Prints, per report interval, the store thread's time per simulated second
/// (writes and maintenance), its longest single maintenance pass, the bytes written per
/// simulated second, and the sizes of the database and WAL files.
#[test]
#[ignore = "timing probe; run with --ignored --nocapture in release"]
fn store_write_cost_probe() {
    let seconds = probe_setting("IOTMON_PROBE_SECONDS", 120);
    let fleet = probe_setting("IOTMON_PROBE_DEVICES", 10_000);
    let report_every = probe_setting("IOTMON_PROBE_REPORT_EVERY", 60).max(1);
    let dir = tempfile::tempdir().expect("dir");
    let mut writer = writer(dir.path(), &BridgeConfig::default());
    let ids: Vec<iotmon_wire::DeviceId> =
        (0..fleet).map(|i| format!("dev-{i:05}").into()).collect();
    let devices: Vec<RegistryEntry> = ids.iter().map(|id| entry(id)).collect();
    writer
        .write(&[batch(devices, Vec::new())])
        .expect("registry");
    let metrics: [Arc<str>; 3] = ["temperature".into(), "humidity".into(), "pressure".into()];
    let (mut total, mut interval_write, mut interval_maintain) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut interval_bytes = bytes_written_by_process();
    let mut longest_maintenance = Duration::ZERO;
    let file_mib = |path: std::path::PathBuf| {
        std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
    };
    eprintln!(
        "simulated s | write ms/s | maintain ms/s | total ms/s | longest maintain ms \
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
        let written = Instant::now();
        writer.maintain(now).expect("maintain");
        interval_write += written - began;
        interval_maintain += written.elapsed();
        longest_maintenance = longest_maintenance.max(written.elapsed());
        if (second + 1) % report_every == 0 {
            let per_second = |d: Duration| d.as_secs_f64() * 1000.0 / report_every as f64;
            let bytes = bytes_written_by_process();
            let db = db_path(dir.path());
            let wal = db.with_extension("db-wal");
            eprintln!(
                "{:>11} | {:>10.1} | {:>13.1} | {:>10.1} | {:>19.0} | {:>13.2} | {:>6.0} | {:>7.0}",
                second + 1,
                per_second(interval_write),
                per_second(interval_maintain),
                per_second(interval_write + interval_maintain),
                longest_maintenance.as_secs_f64() * 1000.0,
                (bytes - interval_bytes) as f64 / report_every as f64 / 1_048_576.0,
                file_mib(db),
                file_mib(wal),
            );
            total += interval_write + interval_maintain;
            (interval_write, interval_maintain, interval_bytes) =
                (Duration::ZERO, Duration::ZERO, bytes);
            longest_maintenance = Duration::ZERO;
        }
    }
    eprintln!(
        "store: {:.2} ms per simulated second over {seconds} s of {fleet} devices",
        total.as_secs_f64() * 1000.0 / seconds as f64,
    );
}
