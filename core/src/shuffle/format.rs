//! The stored form of shuffle data: encoded Arrow IPC messages, ready to send as Flight data.
//!
//! A segment is a sequence of records `[u32 header_len][u32 body_len][header][body]` (little
//! endian), where `header` is an IPC flatbuffer message and `body` its (compressed) buffers —
//! exactly a `FlightData`'s `data_header` and `data_body`, so serving needs no re-encoding.

use arrow_flight::{FlightData, SchemaAsIpc};
use arrow_ipc::writer::{EncodedData, IpcWriteOptions};
use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;

use crate::error::{EmberError, Result};

const RECORD_HEADER: usize = 8;

/// Appends one encoded IPC message to a segment buffer; returns the bytes appended.
pub(crate) fn append_record(buf: &mut Vec<u8>, encoded: &EncodedData) -> usize {
    let header = &encoded.ipc_message;
    let body = &encoded.arrow_data;
    buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(header);
    buf.extend_from_slice(body);
    RECORD_HEADER + header.len() + body.len()
}

/// Splits a segment into Flight messages, without copying the data.
pub fn decode_records(segment: Bytes) -> impl Iterator<Item = Result<FlightData>> + Send {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos == segment.len() {
            return None;
        }
        let corrupt = || EmberError::Internal("corrupt shuffle segment".to_string());
        if segment.len() - pos < RECORD_HEADER {
            pos = segment.len();
            return Some(Err(corrupt()));
        }
        let word = |at: usize| u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        let (hlen, blen) = (word(pos), word(pos + 4));
        let start = pos + RECORD_HEADER;
        if segment.len() - start < hlen + blen {
            pos = segment.len();
            return Some(Err(corrupt()));
        }
        pos = start + hlen + blen;
        Some(Ok(FlightData {
            flight_descriptor: None,
            data_header: segment.slice(start..start + hlen),
            app_metadata: Bytes::new(),
            data_body: segment.slice(start + hlen..start + hlen + blen),
        }))
    })
}

/// The first Flight message of every shuffle stream: the schema.
pub fn encode_schema(schema: &Schema) -> FlightData {
    SchemaAsIpc::new(schema, &IpcWriteOptions::default()).into()
}

/// An Arrow schema as IPC flatbuffer bytes (the form Ember's messages carry).
pub fn schema_to_bytes(schema: &Schema) -> Bytes {
    encode_schema(schema).data_header
}

pub fn schema_from_bytes(bytes: &[u8]) -> Result<Schema> {
    arrow_ipc::convert::try_schema_from_flatbuffer_bytes(bytes)
        .map_err(|e| EmberError::InvalidMessage(format!("bad schema: {e}")))
}

/// Batches as one Arrow IPC stream (results answered by the scheduler itself).
pub fn batches_to_ipc_stream(
    schema: &Schema,
    batches: &[datafusion::arrow::record_batch::RecordBatch],
) -> Result<Bytes> {
    let mut buf = Vec::new();
    {
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(Bytes::from(buf))
}

pub fn batches_from_ipc_stream(
    bytes: &[u8],
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        for (h, b) in [(vec![1u8, 2], vec![3u8; 10]), (vec![9u8; 5], vec![])] {
            append_record(
                &mut buf,
                &EncodedData {
                    ipc_message: h,
                    arrow_data: b,
                },
            );
        }
        let all: Vec<_> = decode_records(Bytes::from(buf.clone()))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(&all[0].data_header[..], &[1, 2]);
        assert_eq!(all[0].data_body.len(), 10);
        assert_eq!(all[1].data_header.len(), 5);

        buf.truncate(buf.len() - 1);
        let last = decode_records(Bytes::from(buf)).last().unwrap();
        assert!(last.is_err());
    }
}
