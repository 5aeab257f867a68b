//! Statements: a query or update runs as one job; `GetFlightInfo` submits it, `DoGet` streams
//! its result through the scheduler (or the client reads it from the executors directly).

use ember_core::error::ErrorKind;

use super::*;

impl FlightSqlGrpc {
    pub(super) async fn submit(
        &self,
        query: Query,
        owner: Option<String>,
    ) -> Result<JobId, Status> {
        self.scheduler
            .submit(query, Vec::new(), owner)
            .await
            .map_err(err)
    }

    /// Waits until the job has finished; a failed or cancelled job is the error.
    pub(super) async fn finished(&self, job_id: &JobId) -> Result<JobStatus, Status> {
        loop {
            let status = self.scheduler.job_status(job_id, POLL).await.map_err(err)?;
            match status.state {
                JobState::Succeeded => return Ok(status),
                JobState::Failed => {
                    // The job's failure kind picks the status code (user error, resources
                    // exhausted, unavailable, internal), as for every other error.
                    return Err(err(EmberError::TaskFailed {
                        message: format!(
                            "query failed: {}",
                            status.error.unwrap_or_else(|| "unknown error".into())
                        ),
                        kind: status.error_kind.unwrap_or(ErrorKind::Internal),
                    }));
                }
                JobState::Cancelled => return Err(Status::cancelled("the query was cancelled")),
                JobState::Queued | JobState::Running => {}
            }
        }
    }

    /// The answer to `GetFlightInfo` for a submitted job.
    pub(super) async fn job_info(
        &self,
        job_id: JobId,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .with_descriptor(descriptor)
            .with_ordered(true);
        let info = match self.results {
            FlightResults::Proxy => {
                let status = self
                    .scheduler
                    .job_status(&job_id, Duration::ZERO)
                    .await
                    .map_err(err)?;
                let ticket = TicketStatementQuery {
                    statement_handle: Bytes::from(job_id.to_string()),
                };
                let total = finished_rows(&status).unwrap_or(-1);
                with_schema(info, &status)?
                    .with_endpoint(
                        FlightEndpoint::new()
                            .with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
                    )
                    .with_total_records(total)
            }
            FlightResults::Direct => {
                let cancel = CancelOnDrop::new(&self.scheduler, &job_id);
                let status = self.finished(&job_id).await?;
                cancel.disarm();
                let endpoints = if status.inline_result.is_empty() {
                    status
                        .result_partitions
                        .iter()
                        .flatten()
                        .map(executor_endpoint)
                        .collect()
                } else {
                    // Computed on the scheduler: read from it.
                    let ticket = TicketStatementQuery {
                        statement_handle: Bytes::from(job_id.to_string()),
                    };
                    vec![
                        FlightEndpoint::new()
                            .with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
                    ]
                };
                let total = finished_rows(&status).unwrap_or(-1);
                with_schema(info, &status)?
                    .with_endpoints(endpoints)
                    .with_total_records(total)
            }
        };
        Ok(Response::new(info))
    }

    /// Streams a finished job's result; the job's data is freed when the stream ends or the
    /// client goes away.
    pub(super) fn result_stream(
        &self,
        status: JobStatus,
    ) -> Result<FlightStream<FlightData>, Status> {
        let release = ReleaseOnDrop(Arc::clone(&self.scheduler), status.job_id.clone());
        let schema = Arc::new(schema_from_bytes(&status.result_schema).map_err(err)?);
        let data: FlightStream<FlightData> = if !status.inline_result.is_empty() {
            let batches = batches_from_ipc_stream(&status.inline_result).map_err(err)?;
            encode_batches(schema, batches)
        } else {
            let fetcher = Arc::clone(&self.fetcher);
            let locations: Vec<PartitionLocation> =
                status.result_partitions.into_iter().flatten().collect();
            let partitions = stream::iter(locations)
                .map(move |location| {
                    let fetcher = Arc::clone(&fetcher);
                    async move { fetcher.fetch(&location, None).await }
                })
                .buffered(2)
                .try_flatten()
                // Every partition starts with its schema; the client gets it once, first.
                .try_filter(|data| std::future::ready(!is_schema_message(data)))
                .map_err(err);
            stream::once(std::future::ready(Ok(encode_schema(&schema))))
                .chain(partitions)
                .boxed()
        };
        Ok(data
            .map(move |item| {
                let _release = &release;
                item
            })
            .boxed())
    }

    /// Runs a statement to its end and counts the rows it changed (the `count` column DML
    /// answers with; 0 for statements without one).
    pub(super) async fn run_update(
        &self,
        query: Query,
        owner: Option<String>,
    ) -> Result<i64, Status> {
        let job_id = self.submit(query, owner).await?;
        let cancel = CancelOnDrop::new(&self.scheduler, &job_id);
        let status = self.finished(&job_id).await?;
        cancel.disarm();
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            self.result_stream(status)?.map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(Status::from)?;
        let mut count = 0i64;
        for batch in &batches {
            if let Some(column) = batch.column_by_name("count")
                && let Some(values) = column.as_primitive_opt::<UInt64Type>()
            {
                count += values.iter().flatten().sum::<u64>() as i64;
            }
        }
        Ok(count)
    }

    /// Cancels the query `info` names, when `caller` may.
    pub(super) fn cancel_handle(
        &self,
        info: FlightInfo,
        caller: Option<&ember_core::auth::Principal>,
    ) -> Result<bool, Status> {
        let Some(ticket) = info.endpoint.first().and_then(|e| e.ticket.as_ref()) else {
            return Err(Status::invalid_argument("the FlightInfo names no query"));
        };
        let job_id = Any::decode(&*ticket.ticket)
            .ok()
            .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
            .map(|t| String::from_utf8_lossy(&t.statement_handle).to_string())
            .or_else(|| {
                ember_core::shuffle::ShuffleTicket::parse(&ticket.ticket)
                    .ok()
                    .map(|t| t.job_id)
            })
            .ok_or_else(|| Status::invalid_argument("the FlightInfo names no Ember query"))?;
        let job_id = JobId::from(job_id);
        crate::api::auth::may_act_as(caller, self.scheduler.owner_of(&job_id).as_deref())?;
        self.scheduler.cancel(&job_id).map_err(err)
    }
}

pub(super) fn with_schema(info: FlightInfo, status: &JobStatus) -> Result<FlightInfo, Status> {
    let schema = schema_from_bytes(&status.result_schema).map_err(err)?;
    info.try_with_schema(&schema)
        .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))
}

pub(super) fn finished_rows(status: &JobStatus) -> Option<i64> {
    if status.state != JobState::Succeeded || !status.inline_result.is_empty() {
        return None;
    }
    Some(
        status
            .result_partitions
            .iter()
            .flatten()
            .map(|l| l.rows as i64)
            .sum(),
    )
}

pub(super) fn executor_endpoint(location: &PartitionLocation) -> FlightEndpoint {
    FlightEndpoint::new()
        .with_ticket(Ticket::new(location.ticket().to_bytes()))
        .with_location(format!("grpc+tcp://{}", location.address))
}

pub(super) fn is_schema_message(data: &FlightData) -> bool {
    datafusion::arrow::ipc::root_as_message(&data.data_header)
        .map(|m| m.header_type() == datafusion::arrow::ipc::MessageHeader::Schema)
        .unwrap_or(false)
}

pub(super) fn encode_batches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> FlightStream<FlightData> {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from)
        .boxed()
}

/// Cancels a job unless disarmed: a client that goes away while its query runs stops it.
pub(super) struct CancelOnDrop(Option<(Arc<Scheduler>, JobId)>);

impl CancelOnDrop {
    pub(super) fn new(scheduler: &Arc<Scheduler>, job_id: &JobId) -> Self {
        Self(Some((Arc::clone(scheduler), job_id.clone())))
    }

    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((scheduler, job_id)) = self.0.take()
            && let Ok(true) = scheduler.cancel(&job_id)
        {
            tracing::info!(%job_id, "the client went away; query cancelled");
        }
    }
}

/// Frees a job's result data when dropped.
pub(super) struct ReleaseOnDrop(Arc<Scheduler>, JobId);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.release(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_messages_are_recognized() {
        let schema = Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "a",
            datafusion::arrow::datatypes::DataType::Int32,
            false,
        )]);
        assert!(is_schema_message(&encode_schema(&schema)));
        assert!(!is_schema_message(&FlightData::default()));
    }
}
