//! An executor's shuffle store: the map outputs it holds, in memory or spilled to local disk.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::FlightData;
use arrow_ipc::CompressionType;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::MemoryReservation;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use parking_lot::Mutex;

use super::ShuffleTicket;
use super::format::{append_record, decode_records, encode_schema};
use crate::error::{EmberError, Result};
use crate::job::PartitionStats;

type MapKey = (String, u32, u32);

/// All map outputs held by one executor.
#[derive(Debug)]
pub struct ShuffleStore {
    dir: PathBuf,
    outputs: Mutex<HashMap<MapKey, Arc<MapOutput>>>,
    /// Jobs whose data was removed: a late map output of theirs is dropped, not kept.
    removed: Mutex<HashSet<String>>,
}

/// The output of one map task: for each output partition, its segments in order.
#[derive(Debug)]
pub struct MapOutput {
    schema: SchemaRef,
    file: Option<PathBuf>,
    partitions: Vec<Vec<Segment>>,
    stats: Vec<PartitionStats>,
}

#[derive(Debug, Clone)]
enum Segment {
    Memory(Bytes),
    File { offset: u64, len: u64 },
}

impl MapOutput {
    pub fn stats(&self) -> &[PartitionStats] {
        &self.stats
    }
}

impl ShuffleStore {
    /// A store that spills under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            outputs: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashSet::new()),
        })
    }

    /// Starts writing the output of map task `map` of `stage`.
    pub fn writer(
        &self,
        job_id: &str,
        stage_id: u32,
        map: u32,
        schema: SchemaRef,
        partitions: usize,
        config: &super::ShuffleConfig,
    ) -> Result<MapOutputWriter> {
        let path = self.dir.join(job_id).join(format!(
            "stage{stage_id}-map{map}-{}.data",
            uuid::Uuid::new_v4().simple()
        ));
        MapOutputWriter::new(schema, path, partitions, config)
    }

    /// Publishes a finished map output (a retried task replaces the earlier attempt's).
    pub fn insert(&self, job_id: &str, stage_id: u32, map: u32, output: MapOutput) {
        if self.removed.lock().contains(job_id) {
            output.remove_file();
            return;
        }
        let old = self
            .outputs
            .lock()
            .insert((job_id.to_string(), stage_id, map), Arc::new(output));
        if let Some(old) = old {
            old.remove_file();
        }
    }

    /// How many jobs have map outputs here (a draining executor waits for none).
    pub fn jobs_held(&self) -> usize {
        let outputs = self.outputs.lock();
        let jobs: HashSet<&str> = outputs.keys().map(|(job, _, _)| job.as_str()).collect();
        jobs.len()
    }

    /// Frees everything held for a job.
    pub fn remove_job(&self, job_id: &str) {
        self.removed.lock().insert(job_id.to_string());
        self.outputs.lock().retain(|(job, _, _), _| job != job_id);
        let _ = std::fs::remove_dir_all(self.dir.join(job_id));
    }

    /// The Flight messages of one partition: its schema, then its stored IPC messages.
    pub fn partition_stream(
        &self,
        ticket: &ShuffleTicket,
    ) -> Result<BoxStream<'static, Result<FlightData>>> {
        let key = (ticket.job_id.clone(), ticket.stage_id, ticket.map_partition);
        let output = self.outputs.lock().get(&key).cloned().ok_or_else(|| {
            EmberError::User(format!(
                "no shuffle output for job {} stage {} map {}",
                ticket.job_id, ticket.stage_id, ticket.map_partition
            ))
        })?;
        let segments = output
            .partitions
            .get(ticket.partition as usize)
            .cloned()
            .ok_or_else(|| {
                EmberError::InvalidMessage(format!("partition {} out of range", ticket.partition))
            })?;
        let schema = stream::once(futures::future::ready(Ok(encode_schema(&output.schema))));
        let file = output.file.clone();
        let data = stream::iter(segments)
            .then(move |segment| load_segment(file.clone(), segment))
            .map_ok(|bytes| stream::iter(decode_records(bytes)))
            .try_flatten();
        Ok(schema.chain(data).boxed())
    }
}

impl MapOutput {
    fn remove_file(&self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

async fn load_segment(file: Option<PathBuf>, segment: Segment) -> Result<Bytes> {
    match segment {
        Segment::Memory(bytes) => Ok(bytes),
        Segment::File { offset, len } => {
            let path = file.ok_or_else(|| EmberError::Internal("segment without file".into()))?;
            tokio::task::spawn_blocking(move || -> Result<Bytes> {
                let file = File::open(&path)?;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(|e| EmberError::Internal(format!("segment read task: {e}")))?
        }
    }
}

/// Encodes one map task's output partitions, spilling to one file past a memory budget.
pub struct MapOutputWriter {
    schema: SchemaRef,
    path: PathBuf,
    file: Option<File>,
    file_len: u64,
    buffers: Vec<Vec<u8>>,
    segments: Vec<Vec<Segment>>,
    stats: Vec<PartitionStats>,
    buffered: usize,
    budget: usize,
    /// The buffered bytes, counted against the executor's memory pool: when the pool cannot
    /// grant more, the buffers spill early.
    reservation: Option<MemoryReservation>,
    generator: IpcDataGenerator,
    trackers: Vec<DictionaryTracker>,
    context: IpcWriteContext,
    options: IpcWriteOptions,
}

impl MapOutputWriter {
    fn new(
        schema: SchemaRef,
        path: PathBuf,
        partitions: usize,
        config: &super::ShuffleConfig,
    ) -> Result<Self> {
        let compression = config.compression.then_some(CompressionType::LZ4_FRAME);
        let options = IpcWriteOptions::default().try_with_compression(compression)?;
        let generator = IpcDataGenerator::default();
        // Encoding the schema assigns each dictionary field its id, as the reader (which gets
        // the schema first) numbers them; batches with dictionaries need those ids.
        let trackers = (0..partitions)
            .map(|_| {
                let mut tracker = DictionaryTracker::new(false);
                generator.schema_to_bytes_with_dictionary_tracker(&schema, &mut tracker, &options);
                tracker
            })
            .collect();
        Ok(Self {
            schema,
            path,
            file: None,
            file_len: 0,
            buffers: vec![Vec::new(); partitions],
            segments: vec![Vec::new(); partitions],
            stats: vec![PartitionStats::default(); partitions],
            buffered: 0,
            budget: config.memory_budget,
            reservation: None,
            generator,
            trackers,
            context: IpcWriteContext::default(),
            options,
        })
    }

    /// Counts buffered bytes against a memory pool from now on.
    pub fn with_reservation(mut self, reservation: MemoryReservation) -> Self {
        self.reservation = Some(reservation);
        self
    }

    /// Encodes `batch` into output partition `partition`.
    pub fn write(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (dictionaries, encoded) = self.generator.encode(
            batch,
            &mut self.trackers[partition],
            &self.options,
            &mut self.context,
        )?;
        let buf = &mut self.buffers[partition];
        let mut written = 0;
        for dict in &dictionaries {
            written += append_record(buf, dict);
        }
        written += append_record(buf, &encoded);
        let stats = &mut self.stats[partition];
        stats.rows += batch.num_rows() as u64;
        stats.bytes += written as u64;
        self.buffered += written;
        let pool_full = self
            .reservation
            .as_mut()
            .is_some_and(|r| r.try_grow(written).is_err());
        if pool_full || self.buffered > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            self.file = Some(File::create(&self.path)?);
        }
        let file = self.file.as_mut().expect("spill file was just opened");
        for (buf, segments) in self.buffers.iter_mut().zip(&mut self.segments) {
            if buf.is_empty() {
                continue;
            }
            file.write_all(buf)?;
            segments.push(Segment::File {
                offset: self.file_len,
                len: buf.len() as u64,
            });
            self.file_len += buf.len() as u64;
            buf.clear();
        }
        self.buffered = 0;
        if let Some(r) = self.reservation.as_mut() {
            r.free();
        }
        Ok(())
    }

    /// Completes the output; what is still buffered stays in memory.
    pub fn finish(mut self) -> Result<MapOutput> {
        if let Some(file) = self.file.as_mut() {
            file.flush()?;
        }
        for (buf, segments) in self.buffers.iter_mut().zip(&mut self.segments) {
            if !buf.is_empty() {
                segments.push(Segment::Memory(Bytes::from(std::mem::take(buf))));
            }
        }
        Ok(MapOutput {
            schema: self.schema,
            file: self.file.map(|_| self.path),
            partitions: self.segments,
            stats: self.stats,
        })
    }
}
