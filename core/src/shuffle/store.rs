//! An executor's shuffle store: the map outputs it holds, in memory or spilled to local disk.
//!
//! In memory a map output keeps its (coalesced) record batches as they are: a reader on the
//! same executor takes them without any copy, and a fetch from another executor encodes each
//! batch once, as it streams, into the Flight messages it sends. Past the task's budget, or
//! when the executor's memory pool refuses more, the batches are encoded as Arrow IPC into the
//! task's spill file, and those stored messages are what a fetch sends (no decode, no
//! re-encode). Memory held by finished outputs stays counted against the pool until the job
//! releases them.

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
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
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
    /// Per output partition: its spilled segments (in order), then its batches in memory.
    partitions: Vec<StoredPartition>,
    stats: Vec<PartitionStats>,
    compression: Option<CompressionType>,
    /// The memory the in-memory batches take, in the executor's pool (freed on drop).
    _reservation: Option<MemoryReservation>,
}

#[derive(Debug, Default, Clone)]
struct StoredPartition {
    /// Encoded IPC records in the spill file: `(offset, len)`.
    spilled: Vec<(u64, u64)>,
    /// What came after the last spill, as written.
    batches: Vec<RecordBatch>,
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

    fn output(&self, ticket: &ShuffleTicket) -> Result<(Arc<MapOutput>, StoredPartition)> {
        let key = (ticket.job_id.clone(), ticket.stage_id, ticket.map_partition);
        let output = self.outputs.lock().get(&key).cloned().ok_or_else(|| {
            EmberError::User(format!(
                "no shuffle output for job {} stage {} map {}",
                ticket.job_id, ticket.stage_id, ticket.map_partition
            ))
        })?;
        let partition = output
            .partitions
            .get(ticket.partition as usize)
            .cloned()
            .ok_or_else(|| {
                EmberError::InvalidMessage(format!("partition {} out of range", ticket.partition))
            })?;
        Ok((output, partition))
    }

    /// The Flight messages of one partition, for another executor or a client: its schema,
    /// its spilled IPC messages as stored, then its in-memory batches, each encoded as it is
    /// sent.
    pub fn partition_stream(
        &self,
        ticket: &ShuffleTicket,
    ) -> Result<BoxStream<'static, Result<FlightData>>> {
        let (output, partition) = self.output(ticket)?;
        let schema = stream::once(futures::future::ready(Ok(encode_schema(&output.schema))));
        let spilled = spilled_messages(output.file.clone(), partition.spilled);
        let mut encoder = BatchEncoder::new(&output.schema, output.compression)?;
        let in_memory = stream::iter(partition.batches)
            .map(move |batch| encoder.encode(&batch))
            .flat_map(|encoded| match encoded {
                Ok(messages) => stream::iter(messages.into_iter().map(Ok)).left_stream(),
                Err(e) => stream::once(futures::future::ready(Err(e))).right_stream(),
            });
        Ok(schema.chain(spilled).chain(in_memory).boxed())
    }

    /// The batches of one partition, for a reader on this executor: spilled ones decoded from
    /// the file, in-memory ones as they are (no copy).
    pub fn partition_batches(
        &self,
        ticket: &ShuffleTicket,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let (output, partition) = self.output(ticket)?;
        let in_memory = stream::iter(partition.batches.into_iter().map(Ok));
        if partition.spilled.is_empty() {
            return Ok(in_memory.boxed());
        }
        let schema = stream::once(futures::future::ready(Ok(encode_schema(&output.schema))));
        let messages = schema
            .chain(spilled_messages(output.file.clone(), partition.spilled))
            .boxed();
        let spilled = super::flight_data_stream(messages).map_err(|e| match e {
            arrow_flight::error::FlightError::ExternalError(inner) => {
                match inner.downcast::<EmberError>() {
                    Ok(ember) => *ember,
                    Err(other) => EmberError::Internal(other.to_string()),
                }
            }
            other => EmberError::Internal(format!("reading spilled shuffle data: {other}")),
        });
        Ok(spilled.chain(in_memory).boxed())
    }
}

/// The stored IPC messages of spilled segments, read from `file` one segment at a time.
fn spilled_messages(
    file: Option<PathBuf>,
    segments: Vec<(u64, u64)>,
) -> impl futures::Stream<Item = Result<FlightData>> + Send + 'static {
    stream::iter(segments)
        .then(move |(offset, len)| load_segment(file.clone(), offset, len))
        .map_ok(|bytes| stream::iter(decode_records(bytes)))
        .try_flatten()
}

/// Encodes batches of one stream into Flight messages (dictionaries first, when they change).
struct BatchEncoder {
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    context: IpcWriteContext,
    options: IpcWriteOptions,
}

impl BatchEncoder {
    fn new(schema: &SchemaRef, compression: Option<CompressionType>) -> Result<Self> {
        let options = IpcWriteOptions::default().try_with_compression(compression)?;
        let generator = IpcDataGenerator::default();
        // Encoding the schema assigns each dictionary field its id, as the reader (which gets
        // the schema first) numbers them; batches with dictionaries need those ids.
        let mut tracker = DictionaryTracker::new(false);
        generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
        Ok(Self {
            generator,
            tracker,
            context: IpcWriteContext::default(),
            options,
        })
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<FlightData>> {
        let (dictionaries, encoded) =
            self.generator
                .encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        Ok(dictionaries
            .into_iter()
            .chain(std::iter::once(encoded))
            .map(|e| FlightData {
                flight_descriptor: None,
                data_header: e.ipc_message.into(),
                app_metadata: Bytes::new(),
                data_body: e.arrow_data.into(),
            })
            .collect())
    }

    /// Encodes `batch` onto the end of a spill segment; returns the bytes appended.
    fn append(&mut self, buf: &mut Vec<u8>, batch: &RecordBatch) -> Result<usize> {
        let (dictionaries, encoded) =
            self.generator
                .encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        let mut written = 0;
        for dict in &dictionaries {
            written += append_record(buf, dict);
        }
        Ok(written + append_record(buf, &encoded))
    }
}

impl MapOutput {
    fn remove_file(&self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

async fn load_segment(file: Option<PathBuf>, offset: u64, len: u64) -> Result<Bytes> {
    let path = file.ok_or_else(|| EmberError::Internal("spilled segment without file".into()))?;
    tokio::task::spawn_blocking(move || -> Result<Bytes> {
        let file = File::open(&path)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(|e| EmberError::Internal(format!("segment read task: {e}")))?
}

/// Collects one map task's output partitions, spilling them (encoded) to one file past a
/// memory budget.
pub struct MapOutputWriter {
    schema: SchemaRef,
    path: PathBuf,
    file: Option<File>,
    file_len: u64,
    partitions: Vec<StoredPartition>,
    stats: Vec<PartitionStats>,
    /// Memory the batches not yet spilled take.
    buffered: usize,
    budget: usize,
    /// The buffered bytes, counted against the executor's memory pool: when the pool cannot
    /// grant more, the buffers spill early.
    reservation: Option<MemoryReservation>,
    pool: Option<Arc<dyn MemoryPool>>,
    compression: Option<CompressionType>,
    /// One encoder per partition: the spilled messages of a partition are one IPC stream.
    encoders: Vec<BatchEncoder>,
}

impl MapOutputWriter {
    fn new(
        schema: SchemaRef,
        path: PathBuf,
        partitions: usize,
        config: &super::ShuffleConfig,
    ) -> Result<Self> {
        let compression = config.compression.then_some(CompressionType::LZ4_FRAME);
        let encoders = (0..partitions)
            .map(|_| BatchEncoder::new(&schema, compression))
            .collect::<Result<_>>()?;
        Ok(Self {
            schema,
            path,
            file: None,
            file_len: 0,
            partitions: vec![StoredPartition::default(); partitions],
            stats: vec![PartitionStats::default(); partitions],
            buffered: 0,
            budget: config.memory_budget,
            reservation: None,
            pool: None,
            compression,
            encoders,
        })
    }

    /// Counts buffered bytes against `pool` from now on (as a spillable consumer while the
    /// task writes; what the finished output keeps in memory, as an unspillable one).
    pub fn with_memory_pool(mut self, pool: &Arc<dyn MemoryPool>, name: String) -> Self {
        self.reservation = Some(
            MemoryConsumer::new(name)
                .with_can_spill(true)
                .register(pool),
        );
        self.pool = Some(Arc::clone(pool));
        self
    }

    /// Adds `batch` to output partition `partition`.
    pub fn write(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let size = data_bytes(batch);
        let stats = &mut self.stats[partition];
        stats.rows += batch.num_rows() as u64;
        stats.bytes += size as u64;
        self.partitions[partition].batches.push(batch.clone());
        self.buffered += size;
        let pool_full = self
            .reservation
            .as_mut()
            .is_some_and(|r| r.try_grow(size).is_err());
        if pool_full || self.buffered > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Encodes every buffered batch into the spill file, one segment per partition.
    fn spill(&mut self) -> Result<()> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            self.file = Some(File::create(&self.path)?);
        }
        let file = self.file.as_mut().expect("spill file was just opened");
        let mut buf = Vec::new();
        for (partition, encoder) in self.partitions.iter_mut().zip(&mut self.encoders) {
            if partition.batches.is_empty() {
                continue;
            }
            buf.clear();
            for batch in std::mem::take(&mut partition.batches) {
                encoder.append(&mut buf, &batch)?;
            }
            file.write_all(&buf)?;
            partition.spilled.push((self.file_len, buf.len() as u64));
            self.file_len += buf.len() as u64;
        }
        self.buffered = 0;
        if let Some(r) = self.reservation.as_mut() {
            r.free();
        }
        Ok(())
    }

    /// Completes the output. What is still buffered stays in memory, held in the pool as
    /// an unspillable consumer (so that the tasks' operators get what is left); when the pool
    /// cannot hold it, it is spilled too.
    pub fn finish(mut self) -> Result<MapOutput> {
        let mut held = None;
        if let Some(pool) = self.pool.take() {
            if let Some(r) = self.reservation.as_mut() {
                r.free();
            }
            let reservation = MemoryConsumer::new("ShuffleStore").register(&pool);
            if self.buffered > 0 && reservation.try_grow(self.buffered).is_err() {
                self.reservation = None;
                self.spill()?;
            }
            held = Some(reservation);
        }
        if let Some(file) = self.file.as_mut() {
            file.flush()?;
        }
        Ok(MapOutput {
            schema: self.schema,
            file: self.file.map(|_| self.path),
            partitions: self.partitions,
            stats: self.stats,
            compression: self.compression,
            _reservation: held,
        })
    }
}

/// The bytes a batch's rows take (as an IPC body would hold them, before padding). Not
/// `get_array_memory_size`, which counts whole shared buffers: string views share blocks of
/// string data among the batches a coalescer makes, and counting a block for each of them made
/// the shuffle spill long before its budget.
pub(crate) fn data_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| array_bytes(c.as_ref()))
        .sum()
}

fn array_bytes(array: &dyn datafusion::arrow::array::Array) -> usize {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::DataType;
    // Views count their 16 bytes each plus the strings stored outside them (over 12 bytes).
    let views = |lengths: &mut dyn Iterator<Item = u32>| -> usize {
        array.len() * 16
            + lengths
                .filter(|&l| l > 12)
                .map(|l| l as usize)
                .sum::<usize>()
    };
    match array.data_type() {
        DataType::Utf8View => views(&mut array.as_string_view().views().iter().map(|v| *v as u32)),
        DataType::BinaryView => {
            views(&mut array.as_binary_view().views().iter().map(|v| *v as u32))
        }
        _ => array.to_data().get_slice_memory_size().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shuffle::{ShuffleConfig, flight_data_stream};
    use datafusion::arrow::array::{DictionaryArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};

    fn batch(start: i64, rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new(
                "tag",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
        ]));
        let keys = Int64Array::from_iter_values(start..start + rows);
        let tags: DictionaryArray<Int32Type> = (start..start + rows)
            .map(|i| ["a", "b", "c"][(i % 3) as usize])
            .collect();
        RecordBatch::try_new(schema, vec![Arc::new(keys), Arc::new(tags)]).unwrap()
    }

    fn ticket(partition: u32) -> ShuffleTicket {
        ShuffleTicket {
            job_id: "job".into(),
            stage_id: 1,
            map_partition: 0,
            partition,
            grant: String::new(),
        }
    }

    /// Writes 7 batches into partition 0 (and none into 1) with a budget that spills after
    /// every second batch when `spill` is set: 6 spilled, the last one kept in memory.
    fn store_with(
        spill: bool,
        compression: bool,
    ) -> (tempfile::TempDir, ShuffleStore, Vec<RecordBatch>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path()).unwrap();
        let batches: Vec<RecordBatch> = (0..7).map(|i| batch(i * 100, 100)).collect();
        let config = ShuffleConfig {
            batch_rows: 8192,
            memory_budget: if spill {
                data_bytes(&batches[0]) + 1
            } else {
                1 << 30
            },
            compression,
        };
        let mut writer = store
            .writer("job", 1, 0, batches[0].schema(), 2, &config)
            .unwrap();
        for b in &batches {
            writer.write(0, b).unwrap();
        }
        let output = writer.finish().unwrap();
        assert_eq!(output.stats()[0].rows, 700);
        assert_eq!(
            output.partitions[0].spilled.len(),
            if spill { 3 } else { 0 }
        );
        assert_eq!(
            output.partitions[0].batches.len(),
            if spill { 1 } else { 7 }
        );
        assert_eq!(output.stats()[1].rows, 0);
        assert_eq!(output.file.is_some(), spill);
        store.insert("job", 1, 0, output);
        (dir, store, batches)
    }

    #[tokio::test]
    async fn partitions_read_back_locally_and_over_flight_whether_spilled_or_not() {
        for (spill, compression) in [(false, false), (true, false), (true, true)] {
            let (_dir, store, batches) = store_with(spill, compression);
            let local: Vec<RecordBatch> = store
                .partition_batches(&ticket(0))
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(local, batches, "local read, spill={spill}");
            let remote: Vec<RecordBatch> =
                flight_data_stream(store.partition_stream(&ticket(0)).unwrap())
                    .try_collect()
                    .await
                    .unwrap();
            assert_eq!(remote, batches, "Flight read, spill={spill}");
            let empty: Vec<RecordBatch> = store
                .partition_batches(&ticket(1))
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(empty.is_empty());
        }
    }

    #[test]
    fn finished_outputs_hold_their_memory_in_the_pool_or_spill() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
        let b = batch(0, 1000);
        let size = data_bytes(&b);
        for (pool_bytes, kept) in [(10 * size, true), (size / 2, false)] {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(pool_bytes));
            let dir = tempfile::tempdir().unwrap();
            let store = ShuffleStore::new(dir.path()).unwrap();
            let config = ShuffleConfig {
                batch_rows: 8192,
                memory_budget: 1 << 30,
                compression: false,
            };
            let mut writer = store
                .writer("job", 1, 0, b.schema(), 1, &config)
                .unwrap()
                .with_memory_pool(&pool, "test".into());
            writer.write(0, &b).unwrap();
            let output = writer.finish().unwrap();
            assert_eq!(output.file.is_none(), kept, "pool of {pool_bytes} bytes");
            assert_eq!(pool.reserved(), if kept { size } else { 0 });
            store.insert("job", 1, 0, output);
            store.remove_job("job");
            assert_eq!(pool.reserved(), 0, "released with the job");
        }
    }

    #[test]
    fn string_views_count_their_own_strings_not_the_shared_blocks() {
        use datafusion::arrow::array::{Array, StringViewArray};
        let long = "a string longer than twelve bytes";
        let all: StringViewArray = (0..1000).map(|i| Some(format!("{long} {i:04}"))).collect();
        let per_row = 16 + long.len() + 5;
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("s", DataType::Utf8View, false),
        ]));
        let half = RecordBatch::try_new(schema, vec![Arc::new(all.slice(0, 500))]).unwrap();
        assert_eq!(data_bytes(&half), 500 * per_row);
        // The slice still holds the block with every string: counting buffers says much more.
        assert!(half.get_array_memory_size() > data_bytes(&half) * 3 / 2);
        let short: StringViewArray = (0..10).map(|i| Some(format!("s{i}"))).collect();
        assert_eq!(
            array_bytes(&short),
            10 * 16,
            "inlined strings live in their views"
        );
        assert_eq!(short.len(), 10);
    }

    #[tokio::test]
    async fn unknown_outputs_and_partitions_are_clear_errors() {
        let (_dir, store, _) = store_with(false, false);
        let mut missing = ticket(0);
        missing.map_partition = 9;
        let e = store.partition_batches(&missing).err().unwrap();
        assert!(e.to_string().contains("no shuffle output"), "{e}");
        let e = store.partition_stream(&ticket(5)).err().unwrap();
        assert!(e.to_string().contains("out of range"), "{e}");
        store.remove_job("job");
        assert!(store.partition_batches(&ticket(0)).is_err());
    }
}
