//! TPC-H: data generation with the `tpchgen` crates (Parquet, one folder per table) and the 22
//! benchmark queries.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::arrow::record_batch::RecordBatchReader;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// Rows per Parquet row group: small enough that several tasks share a table at small scales.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Files a table is written as at `scale_factor` (one for the small tables).
fn parts_for(table: &str, scale_factor: f64) -> i32 {
    match table {
        "region" | "nation" => 1,
        "supplier" => 1,
        _ => ((scale_factor * 4.0).ceil() as i32).clamp(2, 256),
    }
}

fn reader(table: &str, sf: f64, part: i32, parts: i32) -> Box<dyn RecordBatchReader + Send> {
    match table {
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts))),
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts))),
        other => unreachable!("unknown TPC-H table {other}"),
    }
}

/// Generates TPC-H at `scale_factor` as Parquet under `output/<table>/part-N.parquet`.
/// Returns each table's row count.
pub fn generate(scale_factor: f64, output: &Path) -> Result<Vec<(String, u64)>> {
    if !(scale_factor > 0.0 && scale_factor.is_finite()) {
        anyhow::bail!("--scale-factor must be a positive number, got {scale_factor}");
    }
    let mut jobs: Vec<(&str, i32, i32)> = Vec::new();
    for table in TABLES {
        let dir = output.join(table);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let parts = parts_for(table, scale_factor);
        jobs.extend((1..=parts).map(|p| (table, p, parts)));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Vec<(String, u64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(table, part, parts)) = jobs.get(i) else {
                            return Ok(done);
                        };
                        let path = output.join(table).join(format!("part-{part}.parquet"));
                        let rows = write_parquet(reader(table, scale_factor, part, parts), &path)?;
                        done.push((table.to_string(), rows));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked")))
            })
            .collect()
    });
    let mut totals: Vec<(String, u64)> = TABLES.iter().map(|t| (t.to_string(), 0)).collect();
    for result in results {
        for (table, rows) in result? {
            if let Some(t) = totals.iter_mut().find(|(name, _)| *name == table) {
                t.1 += rows;
            }
        }
    }
    Ok(totals)
}

fn write_parquet(reader: Box<dyn RecordBatchReader + Send>, path: &PathBuf) -> Result<u64> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, reader.schema(), Some(props))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    writer.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(rows)
}

/// The file that marks a folder's TPC-H data complete; it holds the scale factor.
const MARKER: &str = "_SUCCESS";

/// Marks `dir`'s data complete, at `scale_factor` (so `ember bench` and the tests reuse it).
pub fn mark_generated(dir: &Path, scale_factor: f64) -> Result<()> {
    std::fs::write(dir.join(MARKER), scale_factor.to_string())
        .with_context(|| format!("marking {} complete", dir.display()))
}

/// The scale factor recorded by `mark_generated` in `dir`; `None` when there is no marker or
/// it names none.
pub fn recorded_scale_factor(dir: &Path) -> Option<f64> {
    std::fs::read_to_string(dir.join(MARKER))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Generates TPC-H into `dir` unless a complete set is already there (marked by `_SUCCESS`).
pub fn ensure_generated(scale_factor: f64, dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Ok(());
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} exists but holds no complete TPC-H data (no _SUCCESS marker): remove it, or \
             generate it with `ember datagen tpch`",
            dir.display()
        );
    }
    let staging = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    generate(scale_factor, &staging)?;
    mark_generated(&staging, scale_factor)?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another process finished first: use its copy.
        Err(_) if marker.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("moving generated data to {}", dir.display())),
    }
}

/// The SQL text of TPC-H query `n` (1..=22).
pub fn query(n: usize) -> Option<&'static str> {
    QUERIES.get(n.checked_sub(1)?).copied()
}

const QUERIES: [&str; 22] = [
    include_str!("../tpch/q1.sql"),
    include_str!("../tpch/q2.sql"),
    include_str!("../tpch/q3.sql"),
    include_str!("../tpch/q4.sql"),
    include_str!("../tpch/q5.sql"),
    include_str!("../tpch/q6.sql"),
    include_str!("../tpch/q7.sql"),
    include_str!("../tpch/q8.sql"),
    include_str!("../tpch/q9.sql"),
    include_str!("../tpch/q10.sql"),
    include_str!("../tpch/q11.sql"),
    include_str!("../tpch/q12.sql"),
    include_str!("../tpch/q13.sql"),
    include_str!("../tpch/q14.sql"),
    include_str!("../tpch/q15.sql"),
    include_str!("../tpch/q16.sql"),
    include_str!("../tpch/q17.sql"),
    include_str!("../tpch/q18.sql"),
    include_str!("../tpch/q19.sql"),
    include_str!("../tpch/q20.sql"),
    include_str!("../tpch/q21.sql"),
    include_str!("../tpch/q22.sql"),
];
