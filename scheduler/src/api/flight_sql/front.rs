//! The Flight service on the scheduler's port: the leader's Flight SQL, or, on a standby, every
//! call forwarded to the leader (streams too), so that a client may connect to any scheduler.

use super::*;
use crate::api::auth::{self, AUTHORIZATION};

/// The Flight service on the scheduler's port: Flight SQL when this scheduler leads, the
/// leader's when it stands by (every call is forwarded there, so a client may connect to any
/// scheduler).
pub struct FlightSqlFront {
    sql: FlightSqlGrpc,
    channels: Channels,
}

impl FlightSqlFront {
    pub fn new(scheduler: Arc<Scheduler>, results: FlightResults) -> Self {
        Self {
            sql: FlightSqlGrpc::new(scheduler, results),
            channels: Channels::default(),
        }
    }

    pub(super) fn leader(&self) -> Result<Option<FlightServiceClient<Channel>>, Status> {
        Ok(
            leader_channel(&self.sql.scheduler, &self.channels)?.map(|channel| {
                FlightServiceClient::new(channel)
                    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            }),
        )
    }
}

/// Forwards a call to the leader when this scheduler stands by; `$boxed` turns the leader's
/// streaming answer into this service's stream type.
macro_rules! forward_flight {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.leader()? {
            return leader.$method(crate::api::auth::forward($request)).await;
        }
    };
    ($self:ident, $request:ident, $method:ident, stream) => {
        if let Some(mut leader) = $self.leader()? {
            let answer = leader.$method(crate::api::auth::forward($request)).await?;
            return Ok(Response::new(answer.into_inner().boxed()));
        }
    };
}

/// A client stream forwarded to the leader, through a channel fed by its own task. A client
/// stream that breaks is reported on the second half, so that the forwarded call is abandoned
/// (the leader sees it cancelled) rather than ended as if the client had sent everything.
pub(super) fn forward_input<T: Send + 'static>(
    mut stream: Streaming<T>,
) -> (
    tokio_stream::wrappers::ReceiverStream<T>,
    tokio::sync::oneshot::Receiver<Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (broken_tx, broken_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = broken_tx.send(status);
                    return;
                }
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), broken_rx)
}

/// Client-streaming calls forwarded to the leader (outside the trait: their futures must be
/// boxed as `Send` on their own).
pub(super) fn forward_handshake(
    mut leader: FlightServiceClient<Channel>,
    request: Request<Streaming<HandshakeRequest>>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<HandshakeResponse>>, Status>>
{
    let credentials = auth::credentials(&request);
    let (input, broken) = forward_input(request.into_inner());
    let input = auth::with_credentials(credentials, input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.handshake(input) => {
                // The session token comes back in the answer's header.
                let answer = answer?;
                let token = answer.metadata().get(AUTHORIZATION).cloned();
                let mut response = Response::new(answer.into_inner().boxed());
                if let Some(token) = token {
                    response.metadata_mut().insert(AUTHORIZATION, token);
                }
                Ok(response)
            }
            Ok(status) = broken => Err(status),
        }
    })
}

pub(super) fn forward_do_put(
    mut leader: FlightServiceClient<Channel>,
    request: Request<Streaming<FlightData>>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<PutResult>>, Status>> {
    let credentials = auth::credentials(&request);
    let (input, broken) = forward_input(request.into_inner());
    let input = auth::with_credentials(credentials, input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.do_put(input) => Ok(Response::new(answer?.into_inner().boxed())),
            Ok(status) = broken => Err(status),
        }
    })
}

pub(super) fn forward_do_exchange(
    mut leader: FlightServiceClient<Channel>,
    request: Request<Streaming<FlightData>>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<FlightData>>, Status>> {
    let credentials = auth::credentials(&request);
    let (input, broken) = forward_input(request.into_inner());
    let input = auth::with_credentials(credentials, input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.do_exchange(input) => Ok(Response::new(answer?.into_inner().boxed())),
            Ok(status) = broken => Err(status),
        }
    })
}

#[tonic::async_trait]
impl FlightService for FlightSqlFront {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;
    type DoExchangeStream = FlightStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_handshake(leader, request).await;
        }
        FlightService::handshake(&self.sql, request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        forward_flight!(self, request, list_flights, stream);
        FlightService::list_flights(&self.sql, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        forward_flight!(self, request, get_flight_info);
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        forward_flight!(self, request, poll_flight_info);
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        forward_flight!(self, request, get_schema);
        FlightService::get_schema(&self.sql, request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        forward_flight!(self, request, do_get, stream);
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_do_put(leader, request).await;
        }
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_do_exchange(leader, request).await;
        }
        FlightService::do_exchange(&self.sql, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        forward_flight!(self, request, do_action, stream);
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        forward_flight!(self, request, list_actions, stream);
        FlightService::list_actions(&self.sql, request).await
    }
}
