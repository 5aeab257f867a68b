//! The Arrow Flight side of the shuffle client: fetching a partition from another executor.

use std::sync::Arc;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, Ticket};
use futures::stream::{BoxStream, StreamExt};
use tonic::transport::Channel;

use super::PartitionLocation;
use crate::error::Result;
use crate::metrics::ExecutorCounters;
use crate::net::Channels;

/// Flight clients to other executors, one channel per address, reused across fetches.
#[derive(Debug, Default)]
pub struct FlightFetcher {
    channels: Channels,
}

impl FlightFetcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams one partition's Flight messages (schema first) from the executor that holds it.
    pub async fn fetch(
        &self,
        location: &PartitionLocation,
        counters: Option<Arc<ExecutorCounters>>,
    ) -> Result<BoxStream<'static, Result<FlightData>>> {
        let channel = self.channels.get(&location.address)?;
        fetch_partition(channel, location, counters).await
    }
}

/// `do_get` of one shuffle partition on an open channel.
pub async fn fetch_partition(
    channel: Channel,
    location: &PartitionLocation,
    counters: Option<Arc<ExecutorCounters>>,
) -> Result<BoxStream<'static, Result<FlightData>>> {
    let mut client = FlightServiceClient::new(channel)
        .max_decoding_message_size(crate::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_GRPC_MESSAGE_BYTES);
    let ticket = Ticket {
        ticket: location.ticket().to_bytes().into(),
    };
    let asked = std::time::Instant::now();
    let response = client
        .do_get(ticket)
        .await
        .map_err(|status| location.fetch_failed(status.message().to_string()))?;
    if let Some(counters) = &counters {
        counters.fetch_seconds.observe(asked.elapsed());
    }
    let location = location.clone();
    let stream = response.into_inner().map(move |item| {
        let data = item.map_err(|status| location.fetch_failed(status.message().to_string()))?;
        if let Some(counters) = &counters {
            let n = (data.data_header.len() + data.data_body.len()) as u64;
            ExecutorCounters::add(&counters.bytes_fetched_remote, n);
        }
        Ok(data)
    });
    Ok(stream.boxed())
}

/// Turns a stream of Flight messages into record batches (the one decode path for local and
/// remote shuffle data and for job results).
pub fn flight_data_stream(
    data: BoxStream<'static, Result<FlightData>>,
) -> arrow_flight::decode::FlightRecordBatchStream {
    let data = data
        .map(|item| item.map_err(|e| arrow_flight::error::FlightError::ExternalError(Box::new(e))));
    arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
}
